"""Convolutional building blocks shared by the HDKD teacher and student.

As described in the HDKD paper (El-Assiouti et al., Eng. Appl. of AI, 2024).
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBN(nn.Sequential):
    """Stem block: conv -> BN -> GELU, stride 2 when it opens a stage."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, downsample: bool = False):
        super().__init__(
            nn.Conv2d(inp, oup, kernel_size, 2 if downsample else 1, kernel_size // 2, bias=False),
            nn.BatchNorm2d(oup),
            nn.GELU(),
        )


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=False),
            nn.GELU(),
            nn.Conv2d(channels // reduction, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True))
        return pooled.sigmoid()


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return self.conv(maps).sigmoid()


class CBAM(nn.Module):
    """Channel then spatial attention, with its own residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.channel = ChannelAttention(channels)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.channel(x)
        y = y * self.spatial(y)
        return y + x


class SqueezeExcite(nn.Module):
    """SE for the MBConv ablation; the squeeze width follows the block input, as in the reference."""

    def __init__(self, block_inp: int, hidden: int, ratio: float = 0.25):
        super().__init__()
        squeezed = int(block_inp * ratio)
        self.fc = nn.Sequential(
            nn.Linear(hidden, squeezed, bias=False),
            nn.GELU(),
            nn.Linear(squeezed, hidden, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class MBCSA(nn.Module):
    """Pre-norm inverted bottleneck with CBAM attention (MBConv with SE when `attention="se"`)."""

    def __init__(
        self,
        inp: int,
        oup: int,
        kernel_size: int = 3,
        downsample: bool = False,
        expansion: int = 4,
        attention: str = "cbam",
    ):
        super().__init__()
        hidden = inp * expansion
        attn: nn.Module = CBAM(hidden) if attention == "cbam" else SqueezeExcite(inp, hidden)
        self.norm = nn.BatchNorm2d(inp)
        self.branch = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 2 if downsample else 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, kernel_size, 1, kernel_size // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.GELU(),
            attn,
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )
        self.shortcut: nn.Module
        if downsample:
            self.shortcut = nn.Sequential(nn.MaxPool2d(3, 2, 1), nn.Conv2d(inp, oup, 1, bias=False))
        else:
            if inp != oup:
                raise ValueError(f"a block without downsampling keeps its width, got {inp} -> {oup}")
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.branch(self.norm(x))


class MBConv(MBCSA):
    """Ablation baseline: MBCSA with squeeze-excitation in place of CBAM."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, downsample: bool = False, expansion: int = 4):
        super().__init__(inp, oup, kernel_size, downsample, expansion, attention="se")


BLOCKS: dict[str, type[nn.Module]] = {"stem": ConvBN, "mbcsa": MBCSA, "mbconv": MBConv}


def make_stage(kind: str, inp: int, oup: int, depth: int, kernel_size: int = 3) -> nn.Sequential:
    """`depth` blocks; the first halves the resolution and changes the width."""
    if kind not in BLOCKS:
        raise ValueError(f"unknown block kind {kind!r}: use one of {sorted(BLOCKS)}")
    block = BLOCKS[kind]
    return nn.Sequential(*(block(inp if i == 0 else oup, oup, kernel_size, downsample=i == 0) for i in range(depth)))
