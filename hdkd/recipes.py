"""Named sets of params.yaml values. `hdkd recipe paper` writes the published HDKD recipe into params.yaml
(comments kept, as `dvc exp run -S` does), so DVC sees and records exactly what a run used.

The published recipe (El-Assiouti et al., 2024): the `paper` networks at 224 px; the teacher with Adam at a
constant 1e-3; both students with AdamW at 5e-5, weight decay 0.05 and a cosine schedule (5 warm-up epochs
from 2e-5, minimum 2e-5); batch 16 and 200 epochs for every network; soft logit distillation (alpha 0.5,
T 1) plus feature distillation (lambda 10, beta 1) over stages 1-3; no tuning; SMOTE for HAM-10000, none for
the Brain Tumor MRI set.
"""

from __future__ import annotations

from typing import Any

from hdkd.config import Params

_STUDENT = {
    "opt": "adamw",
    "lr": 5e-5,
    "weight_decay": 0.05,
    "sched": "cosine",
    "warmup_epochs": 5,
    "warmup_lr": 2e-5,
    "min_lr": 2e-5,
    "batch_size": 16,
    "epochs": 200,
    "patience": None,  # the published runs trained all 200 epochs
}
_TEACHER = {
    "opt": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "sched": "none",
    "warmup_epochs": 0,
    "batch_size": 16,
    "epochs": 200,
    "patience": None,
}
_DISTILL = {
    "method": "hdkd",
    "kl_scale": "per_logit",
    "alpha": 0.5,
    "temperature": 1.0,
    "kind": "soft",
    "lambda_feat": 10.0,
    "beta": 1.0,
    "stages": [1, 2, 3],
}

RECIPES = ("paper",)


def recipe_overrides(name: str, params: Params) -> dict[str, Any]:
    """The dotted params.yaml values of recipe `name` for the data set `params` points at."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: use one of {', '.join(RECIPES)}")
    overrides: dict[str, Any] = {"model.preset": "paper", "data.image_size": 224, "tune.enabled": False}
    overrides |= {f"teacher.{key}": value for key, value in _TEACHER.items()}
    for section in ("student", "distill"):
        overrides |= {f"{section}.{key}": value for key, value in _STUDENT.items()}
    overrides |= {f"distill.{key}": value for key, value in _DISTILL.items()}
    # The published Brain Tumor MRI runs used no SMOTE; the HAM-10000 runs balanced the train split.
    overrides["balance.enabled"] = params.data.source != "brain_tumor_mri"
    if overrides["balance.enabled"]:
        overrides["balance.targets"] = "auto"
    return overrides


def dvc_flags(overrides: dict[str, Any]) -> list[str]:
    """The same values as `dvc exp run -S key=value` arguments (YAML flow syntax for lists)."""
    import yaml

    flags = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        flags += ["-S", f"{key}={text}"]
    return flags
