"""Inference preparation of the frozen HDKD teacher: BatchNorm folding and a fast layout.

During distillation the teacher only runs forward in eval mode, where a BatchNorm is a fixed
per-channel affine map `y = s * x + t` (`s = gamma / sqrt(var + eps)`, `t = beta - mean * s`).
Two patterns occur in the HDKD networks, and both fold exactly:

- conv -> BN (stem `ConvBN`, every convolution of an MBCSA/MBConv branch): scale the conv's
  output channels and give it a bias (`torch.nn.utils.fusion.fuse_conv_bn_eval`).
- BN -> conv (the pre-norm `MBCSA.norm`, which feeds only the branch's first 1x1 conv, never
  the shortcut): scale the conv's *input* channels and add `W @ t` to its bias. This is exact
  because that conv has no padding, so every input it reads went through the BN.

`torch.fx.experimental.optimization.fuse` does the first pattern only and cannot trace the
teacher (`forward(x, return_features)` branches on a Python bool); `torch.ao`'s
`fuse_modules` wants name lists and has no BN -> conv rule either. Hence this small walk over
the model's own modules, which keeps the teacher's class, attributes and forward.
"""

from __future__ import annotations

import copy
import os
from typing import cast

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from hdkd.models.blocks import MBCSA

COMPILE_ENV = "HDKD_COMPILE_TEACHER"


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def fold_bn_into_next_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of `conv` computing `conv(bn(x))` (eval-mode `bn`); needs no padding and groups=1."""
    unpadded = conv.padding == "valid" or (isinstance(conv.padding, tuple) and not any(conv.padding))
    if conv.groups != 1 or not unpadded:
        raise ValueError(f"BN -> conv folding needs groups=1 and no padding, got {conv}")
    scale, shift = _bn_scale_shift(bn)
    weight = conv.weight.double()
    bias = (weight * shift.view(1, -1, 1, 1)).sum((1, 2, 3))
    if conv.bias is not None:
        bias = bias + conv.bias.double()
    fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter((weight * scale.view(1, -1, 1, 1)).to(conv.weight.dtype), requires_grad=False)
    fused.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    return fused


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """Fold, in place, every BatchNorm2d of an eval-mode HDKD network into a convolution.

    Raises if a BatchNorm is left over (a pattern this function does not know), so a folded
    model is never silently half-folded.
    """
    if model.training:
        raise ValueError("fold BatchNorm only in eval mode (it uses the running statistics)")
    modules = list(model.modules())
    for module in modules:
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, bn = module[i], module[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(conv, bn)
                    module[i + 1] = nn.Identity()
    for module in modules:
        if isinstance(module, MBCSA) and isinstance(module.norm, nn.BatchNorm2d):
            first = module.branch[0]
            if not isinstance(first, nn.Conv2d):
                raise TypeError(f"MBCSA branch should open with a Conv2d, found {type(first).__name__}")
            module.branch[0] = fold_bn_into_next_conv(module.norm, first)
            module.norm = nn.Identity()  # type: ignore[assignment]
    left = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ValueError(f"BatchNorm layers not folded: {left}")
    return model


def _compile_requested() -> bool:
    return os.environ.get(COMPILE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def prepare_teacher(teacher: nn.Module, compile: bool | None = None) -> nn.Module:
    """An inference-only copy of a trained teacher for distillation; `teacher` is left untouched.

    The copy is in eval mode, has no gradients, has every BatchNorm folded into a convolution
    and its weights in channels_last (oneDNN's fast layout on CPU; the first convolution then
    produces channels_last maps from an ordinary NCHW input, so callers change nothing, and
    the stage maps come back channels_last with the same values). Logits and stage maps equal
    those of `teacher.eval()` up to float rounding.

    `compile=True` (or `HDKD_COMPILE_TEACHER=1` when `compile` is None) also wraps the copy in
    `torch.compile`: a further ~1.5x on the paper teacher forward on CPU, but the first call
    compiles for about a minute (and once more for another batch size), so it is opt-in.
    """
    prepared = copy.deepcopy(teacher).eval()
    fold_batchnorms(prepared)
    prepared = prepared.to(memory_format=torch.channels_last).requires_grad_(False)
    if compile if compile is not None else _compile_requested():
        return cast(nn.Module, torch.compile(prepared))
    return prepared
