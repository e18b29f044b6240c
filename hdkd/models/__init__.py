"""HDKD networks; importing this package registers them with timm (`hdkd_{kind}_{preset}`)."""

from hdkd.models.blocks import CBAM, MBCSA, ConvBN, MBConv
from hdkd.models.networks import KINDS, PRESETS, HDKDStudent, HDKDTeacher, Preset, build_model

__all__ = [
    "CBAM",
    "KINDS",
    "MBCSA",
    "PRESETS",
    "ConvBN",
    "HDKDStudent",
    "HDKDTeacher",
    "MBConv",
    "Preset",
    "build_model",
]
