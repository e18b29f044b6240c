"""Inference preparation of the frozen HDKD teacher: BatchNorm folding, fused conv -> GELU, a leaner CBAM,
channels_last and, where the hardware runs it natively, bfloat16.

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
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils._pytree import tree_map

from hdkd.models.blocks import CBAM, MBCSA

COMPILE_ENV = "HDKD_COMPILE_TEACHER"

TeacherDtype = Literal["auto", "fp32", "bf16"]


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


class InferenceCBAM(nn.Module):
    """CBAM's function for a frozen network, in fewer and faster passes: both channel-attention pools go
    through the MLP as one float32 batch of vectors (`linear`, not 1x1 convolutions of 1x1 maps), the two
    means are matrix products, and the last multiply and the residual add are one `addcmul`. The same
    values up to float rounding.

    Measured on 1 thread of a loaded 2-core AVX-512 EPYC: the MLP on 32x384 pooled vectors takes 0.6 ms as
    bf16 convolutions, 0.04 ms as float32 `linear`. PyTorch's CPU `mean` of a bf16 channels_last map runs
    3-7x slower than fp32's (16x384x56x56, paper stage 2: ~60 ms over (H, W), ~130 ms over C); a matmul
    runs at oneDNN speed (~20-30 ms) and, like `mean`, accumulates in float32."""

    def __init__(self, cbam: CBAM):
        super().__init__()
        squeeze, expand = cast(nn.Conv2d, cbam.channel.mlp[0]), cast(nn.Conv2d, cbam.channel.mlp[2])
        self.squeeze = nn.Parameter(squeeze.weight.detach().flatten(1), requires_grad=False)
        self.expand = nn.Parameter(expand.weight.detach().flatten(1), requires_grad=False)
        self.spatial = cbam.spatial.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        pixels = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)  # a view for channels_last x
        mean = torch.bmm(x.new_ones(batch, 1, height * width), pixels).view(batch, channels) / (height * width)
        pooled = torch.cat([mean, x.amax((2, 3))]).float()
        gate = F.linear(F.gelu(F.linear(pooled, self.squeeze.float())), self.expand.float())
        y = x * (gate[:batch] + gate[batch:]).sigmoid().to(x.dtype).view(batch, channels, 1, 1)
        channel_mean = (y.permute(0, 2, 3, 1) @ y.new_ones(channels, 1)).permute(0, 3, 1, 2) / channels
        maps = torch.cat([channel_mean, y.amax(1, keepdim=True)], dim=1)
        return torch.addcmul(x, y, self.spatial(maps).sigmoid())


def inference_cbams(model: nn.Module) -> nn.Module:
    """Replace, in place, every CBAM of a frozen network by its `InferenceCBAM`."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, CBAM):
                setattr(module, name, InferenceCBAM(child))
    return model


class ConvGELU(nn.Module):
    """A convolution and the GELU after it as one oneDNN call, GELU applied as the convolution's post-op (the
    op Inductor emits for this pair on CPU): one pass over the map instead of two. Paper preset, 16x96x56x56
    into 384 channels, 1 thread: 178 ms against 271 ms in fp32, 100 ms against 148 ms in bf16."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not isinstance(conv.padding, tuple):
            raise ValueError(f"ConvGELU needs numeric padding, got {conv}")
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        return torch.ops.mkldnn._convolution_pointwise(
            x.contiguous(memory_format=torch.channels_last),  # the stem's NCHW input; a no-op for the rest
            conv.weight,
            conv.bias,
            list(conv.padding),
            list(conv.stride),
            list(conv.dilation),
            conv.groups,
            "gelu",
            [],
            "none",
        )


def fuse_conv_gelu(model: nn.Module) -> nn.Module:
    """Fuse, in place, every Conv2d -> (Identity ->) GELU of the model's Sequentials into a `ConvGELU`."""
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        for i, conv in enumerate(module):
            if not isinstance(conv, nn.Conv2d):
                continue
            j = i + 1
            while j < len(module) and isinstance(module[j], nn.Identity):
                j += 1
            if j < len(module) and isinstance(module[j], nn.GELU) and module[j].approximate == "none":
                module[i], module[j] = ConvGELU(conv), nn.Identity()
    return model


def _compile_requested() -> bool:
    return os.environ.get(COMPILE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def fast_bf16(device: torch.device | str) -> bool:
    """Whether bf16 convolutions are native on `device`: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or
    AMX (oneDNN's bf16 kernels). On an AVX2-only CPU oneDNN emulates bf16, about 13x slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _bf16_input(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    return (args[0].to(torch.bfloat16), *args[1:]), kwargs


def _fp32_output(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
    return tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) else t, output)


def prepare_teacher(
    teacher: nn.Module, dtype: TeacherDtype = "fp32", device: torch.device | str = "cpu", compile: bool | None = None
) -> nn.Module:
    """An inference-only copy of a trained teacher for distillation; `teacher` is left untouched.

    The copy is in eval mode, has no gradients, has every BatchNorm folded into a convolution
    and its weights in channels_last (oneDNN's fast layout on CPU; the first convolution then
    produces channels_last maps from an ordinary NCHW input, so callers change nothing, and
    the stage maps come back channels_last with the same values). Logits and stage maps equal
    those of `teacher.eval()` up to float rounding.

    Every CBAM becomes an `InferenceCBAM` and, on CPU, every conv -> GELU a `ConvGELU` (same values).

    `dtype="bf16"` (or `"auto"` where `fast_bf16(device)`) stores the weights in bfloat16 and runs the
    whole forward in it: input cast in, logits and stage maps cast back to float32 by hooks, so the
    class, its forward and its callers stay as they are. Weights cast once rather than autocast's cast
    on every call (frozen weights are outside autocast's cache). Logits and stage maps stay within 1%
    of fp32 and the HDKD loss within 0.1% (tests/models/test_fuse.py); the teacher forward runs 2.1x
    faster at the paper preset and 1.4x at the small one on an AVX512-BF16 EPYC (benchmarks/distill_step.py).

    `compile=True` (or `HDKD_COMPILE_TEACHER=1` when `compile` is None) also wraps the copy in
    `torch.compile`: a further 1.2x on the paper teacher forward on CPU (bf16, batch 16, 2-core EPYC, side
    by side), but the first call compiles for about a minute (40 s cold on that machine, and once more for
    another batch size), so it is opt-in.
    """
    prepared = copy.deepcopy(teacher).eval()
    inference_cbams(fold_batchnorms(prepared))
    if torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available():
        fuse_conv_gelu(prepared)
    prepared = prepared.to(memory_format=torch.channels_last).requires_grad_(False)
    if dtype == "bf16" or (dtype == "auto" and fast_bf16(device)):
        prepared = prepared.to(torch.bfloat16)
        prepared.register_forward_pre_hook(_bf16_input, with_kwargs=True)
        prepared.register_forward_hook(_fp32_output)
    if compile if compile is not None else _compile_requested():
        return cast(nn.Module, torch.compile(prepared))
    return prepared
