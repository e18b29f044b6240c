"""Parameter and multiply-accumulate counts, measured with PyTorch's own FLOP counter."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, img_size: int, in_chans: int = 3) -> int:
    """MACs of one eval-mode forward pass on a single image (FLOPs / 2)."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, in_chans, img_size, img_size))
    model.train(was_training)
    return counter.get_total_flops() // 2
