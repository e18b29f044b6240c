"""Distillation losses: HDKD's (DeiT-style logits plus weighted feature MSE over stage pairs) and Hinton's KD.

The losses of HDKD (El-Assiouti et al., "HDKD: Hybrid data-efficient knowledge distillation network for
medical image classification", Engineering Applications of Artificial Intelligence, 2024): the logit term
trains a distillation token and head in the manner of DeiT (Touvron et al., "Training data-efficient image
transformers & distillation through attention", ICML 2021), the feature term matches the stage outputs
that teacher and student share.

The standard reference every KD paper reports, HDKD's among them, is Hinton's knowledge distillation
(Hinton, Vinyals and Dean, "Distilling the knowledge in a neural network", arXiv:1503.02531, 2015) on the
plain student: one head, the KD term on it, its KL divergence averaged over the batch (`HintonKDLoss`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

# The soft KD term's KL divergence, summed, is divided by the number of logits (DeiT's and so HDKD's, see
# MODEL_SPEC.md "Losses") or by the batch size (Hinton's `batchmean`): C times the DeiT term for C classes.
KLScale = Literal["per_logit", "per_image"]


def logit_distillation_loss(
    cls_logits: torch.Tensor,
    dist_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 1.0,
    kind: Literal["soft", "hard"] = "soft",
    kl_scale: KLScale = "per_logit",
) -> torch.Tensor:
    """`(1 - alpha) * CE(class head, labels) + alpha * KD(distillation head, teacher)`."""
    base = F.cross_entropy(cls_logits, labels)
    if kind == "soft":
        t = temperature
        count = dist_logits.numel() if kl_scale == "per_logit" else dist_logits.shape[0]
        kd = F.kl_div(
            F.log_softmax(dist_logits / t, dim=1),
            F.log_softmax(teacher_logits / t, dim=1),
            reduction="sum",
            log_target=True,
        ) * (t * t / count)
    elif kind == "hard":
        kd = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
    else:
        raise ValueError(f"unknown distillation kind {kind!r}: use 'soft' or 'hard'")
    return (1 - alpha) * base + alpha * kd


def feature_distillation_loss(
    teacher_features: Sequence[torch.Tensor],
    student_features: Sequence[torch.Tensor],
    stages: Sequence[int] = (1, 2, 3),
    beta: float = 1.0,
) -> torch.Tensor:
    """`sum_i MSE(teacher_stage, student_stage) * (i + 1) ** beta` over the chosen (1-based) stages."""
    total = student_features[0].new_zeros(())
    for i, stage in enumerate(stages):
        teacher, student = teacher_features[stage - 1], student_features[stage - 1]
        if teacher.shape != student.shape:
            raise ValueError(
                f"feature distillation at stage {stage}: teacher map {tuple(teacher.shape)} and "
                f"student map {tuple(student.shape)} differ; use a teacher and student of the same preset"
            )
        # Compared as (B, H, W, C), the memory order of the channels_last maps training uses (hdkd/training/loop.py):
        # the gradient then goes back channels_last. On the (B, C, H, W) view mse_loss's gradient comes back NCHW,
        # and the student's whole backward pass mixed layouts (GELU and BatchNorm backward ran 2x slower).
        total = total + F.mse_loss(student.movedim(1, -1), teacher.detach().movedim(1, -1)) * (i + 1) ** beta
    return total


class HDKDLoss(nn.Module):
    """`L = L_logit + lambda_feat * L_feat`; returns the total and its parts for logging."""

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 1.0,
        kind: Literal["soft", "hard"] = "soft",
        lambda_feat: float = 10.0,
        beta: float = 1.0,
        stages: Sequence[int] = (1, 2, 3),
        kl_scale: KLScale = "per_logit",
    ):
        super().__init__()
        self.alpha, self.temperature, self.kind, self.kl_scale = alpha, temperature, kind, kl_scale
        self.lambda_feat, self.beta, self.stages = lambda_feat, beta, tuple(stages)

    def forward(
        self,
        student_logits: tuple[torch.Tensor, torch.Tensor],
        student_features: Sequence[torch.Tensor],
        teacher_logits: torch.Tensor,
        teacher_features: Sequence[torch.Tensor],
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cls_logits, dist_logits = student_logits
        logit = logit_distillation_loss(
            cls_logits, dist_logits, teacher_logits, labels, self.alpha, self.temperature, self.kind, self.kl_scale
        )
        feat = feature_distillation_loss(teacher_features, student_features, self.stages, self.beta)
        total = logit + self.lambda_feat * feat
        return total, {"loss_logit": logit.detach(), "loss_feat": feat.detach()}


class HintonKDLoss(nn.Module):
    """Hinton et al. 2015 knowledge distillation on a one-head student:
    `(1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))`, the KL averaged over the
    batch (`batchmean`). With `kind="hard"` the KD term is the cross-entropy to the teacher's argmax."""

    def __init__(self, alpha: float = 0.5, temperature: float = 1.0, kind: Literal["soft", "hard"] = "soft"):
        super().__init__()
        self.alpha, self.temperature, self.kind = alpha, temperature, kind

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = logit_distillation_loss(
            student_logits,
            student_logits,
            teacher_logits,
            labels,
            self.alpha,
            self.temperature,
            self.kind,
            kl_scale="per_image",
        )
        return total, {"loss_logit": total.detach()}
