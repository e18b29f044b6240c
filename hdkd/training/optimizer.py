"""The optimizer and per-epoch learning-rate schedule of a training section: timm's own factories."""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from hdkd.config import TrainParams


def build_optimizer(model: nn.Module, params: TrainParams) -> tuple[torch.optim.Optimizer, Any]:
    """timm's optimizer and per-epoch scheduler factories (cosine with warm-up, or constant)."""
    optimizer = create_optimizer_v2(model, opt=params.opt, lr=params.lr, weight_decay=params.weight_decay)
    if params.sched == "none":
        return optimizer, None
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=params.sched,
        num_epochs=params.epochs,
        warmup_epochs=params.warmup_epochs,
        warmup_lr=params.warmup_lr,
        min_lr=params.min_lr,
    )
    return optimizer, scheduler
