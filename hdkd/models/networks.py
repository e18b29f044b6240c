"""The HDKD teacher (CNN) and student (hybrid CNN + DFLT), and their timm-registered presets.

Teacher and student share stage types and widths, so stage i of one can be distilled into
stage i of the other directly. `forward(x, return_features=True)` returns the logits and the
three stage maps from one pass: distillation never runs a network twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.models import register_model
from torch import nn

from hdkd.models.blocks import make_stage
from hdkd.models.dflt import DFLT

Logits = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
from hdkd.kinds import KINDS  # noqa: E402  (the one list of network kinds)


@dataclass(frozen=True)
class Preset:
    img_size: int
    channels: tuple[int, int, int]
    teacher_depths: tuple[int, int, int]
    student_depths: tuple[int, int, int]
    dflt_depth: int
    dim: int
    heads: int
    dim_head: int
    patch: int
    expansion: int


PRESETS: dict[str, Preset] = {
    "paper": Preset(224, (64, 96, 192), (6, 6, 9), (2, 2, 3), 3, 256, 8, 32, 2, 4),
    "small": Preset(64, (32, 48, 96), (2, 3, 4), (1, 1, 2), 2, 128, 4, 32, 2, 4),
    "tiny": Preset(32, (16, 24, 48), (1, 2, 2), (1, 1, 1), 1, 64, 2, 16, 2, 2),
}


class _ConvStages(nn.Module):
    """Stage 1 of stem blocks, stages 2 and 3 of MBCSA (or MBConv) blocks; stride 8 overall."""

    def __init__(self, depths: tuple[int, int, int], channels: tuple[int, int, int], block: str, in_chans: int):
        super().__init__()
        self.stage1 = make_stage("stem", in_chans, channels[0], depths[0])
        self.stage2 = make_stage(block, channels[0], channels[1], depths[1])
        self.stage3 = make_stage(block, channels[1], channels[2], depths[2])
        self.num_features = channels[2]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        return [f1, f2, self.stage3(f2)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def forward_head(self, x: torch.Tensor) -> Logits:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_features: bool = False) -> Logits | tuple[Logits, list[torch.Tensor]]:
        features = self.forward_stages(x)
        logits = self.forward_head(features[-1])
        return (logits, features) if return_features else logits


class HDKDTeacher(_ConvStages):
    """CNN teacher: stages -> global average pool -> Linear(c3, 128) -> Linear(128, classes)."""

    def __init__(
        self,
        num_classes: int = 7,
        depths: tuple[int, int, int] = (6, 6, 9),
        channels: tuple[int, int, int] = (64, 96, 192),
        block: str = "mbcsa",
        in_chans: int = 3,
        img_size: int = 224,
    ):
        super().__init__(depths, channels, block, in_chans)
        self.img_size = img_size
        self.num_classes = num_classes
        # No activation between the two linear layers, as in the reference.
        self.pre_logits = nn.Linear(channels[2], 128)
        self.head = nn.Linear(128, num_classes)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pre_logits(x.mean((2, 3))))


class HDKDStudent(_ConvStages):
    """Hybrid student. With `distilled=True` (HDKD) it has a distillation token and head: in
    training it returns (class logits, distillation logits), in eval their mean."""

    def __init__(
        self,
        num_classes: int = 7,
        depths: tuple[int, int, int] = (2, 2, 3),
        channels: tuple[int, int, int] = (64, 96, 192),
        block: str = "mbcsa",
        in_chans: int = 3,
        img_size: int = 224,
        distilled: bool = True,
        dflt_depth: int = 3,
        dim: int = 256,
        heads: int = 8,
        dim_head: int = 32,
        patch: int = 2,
        expansion: int = 4,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        predict_heads: str = "both",
    ):
        super().__init__(depths, channels, block, in_chans)
        if predict_heads not in ("both", "class"):
            raise ValueError(f"predict_heads must be 'both' or 'class', not {predict_heads!r}")
        self.predict_heads = predict_heads  # "class": a student whose distillation head learnt nothing
        if img_size % (8 * patch):
            raise ValueError(f"image size {img_size} must be divisible by 8 * patch = {8 * patch}")
        self.img_size = img_size
        self.num_classes = num_classes
        self.distilled = distilled
        self.dflt = DFLT(
            img_size // 8,
            channels[2],
            patch,
            dim,
            dflt_depth,
            heads,
            dim_head,
            expansion,
            distilled,
            dropout,
            emb_dropout,
        )
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes) if distilled else None

    def forward_head(self, x: torch.Tensor) -> Logits:
        tokens = self.dflt(x)
        logits = self.head(tokens[:, 0])
        if self.head_dist is None:
            return logits
        dist_logits = self.head_dist(tokens[:, 1])
        if self.training:
            return logits, dist_logits
        return logits if self.predict_heads == "class" else (logits + dist_logits) / 2


def build_model(kind: str, preset: str, num_classes: int = 7, **kwargs: Any) -> HDKDTeacher | HDKDStudent:
    """One of `teacher`, `student` (no KD) or `distilled` (HDKD) at a named preset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use one of {sorted(PRESETS)}")
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}: use one of {list(KINDS)}")
    p = PRESETS[preset]
    kwargs.setdefault("img_size", p.img_size)
    if kind == "teacher":
        return HDKDTeacher(num_classes, p.teacher_depths, p.channels, **kwargs)
    kwargs.setdefault("distilled", kind == "distilled")  # False for a student distilled by Hinton's KD
    return HDKDStudent(
        num_classes,
        p.student_depths,
        p.channels,
        dflt_depth=p.dflt_depth,
        dim=p.dim,
        heads=p.heads,
        dim_head=p.dim_head,
        patch=p.patch,
        expansion=p.expansion,
        **kwargs,
    )


def _register(kind: str, preset: str) -> None:
    def create(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise ValueError("HDKD models have no published pretrained weights; train them with `dvc repro`")
        for timm_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(timm_only, None)
        return build_model(kind, preset, **kwargs)

    create.__name__ = create.__qualname__ = f"hdkd_{kind}_{preset}"
    create.__module__ = __name__
    register_model(create)


for _kind in KINDS:
    for _preset in PRESETS:
        _register(_kind, _preset)
