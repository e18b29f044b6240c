"""The search spaces: `tune.space` sampled as section values, and params.yaml's own setting as a point.

Both students are tuned alike (a fair comparison): the plain student searches the keys of
`tune.space` that its `student` section has too (the optimiser keys: lr, weight_decay, ...), with
the same ranges; HDKD searches all of `tune.space`, its distillation keys included.
"""

from __future__ import annotations

from typing import Any, get_origin

from optuna.trial import Trial

from hdkd.config import Choice, DistillParams, FloatRange, Params
from hdkd.kinds import NETWORKS

OBJECTIVE = "val_macro_f1"  # what every trial reports each epoch and the studies maximise

TUNED_KINDS = ("student", "distilled")  # in this order: the student's study needs no teacher


def _label(choice: Any) -> Any:
    """Optuna's categorical values are scalars: a list of stages is searched as "2,3"."""
    return ",".join(str(item) for item in choice) if isinstance(choice, list) else choice


def value_of(key: str, label: Any) -> Any:
    if isinstance(label, str) and get_origin(DistillParams.model_fields[key].annotation) is list:
        return [int(item) for item in label.split(",") if item]
    return label


def space_for(params: Params, kind: str) -> dict[str, FloatRange | Choice]:
    """What `kind`'s study searches: all of `tune.space` for HDKD, the shared keys for the plain student."""
    return dict(params.tune.space) if kind == "distilled" else params.tune.shared_space()


def suggest(trial: Trial, space: dict[str, FloatRange | Choice]) -> dict[str, Any]:
    """Sample one point of a search space, as section values (stages as lists)."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, FloatRange):
            values[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
        else:
            values[key] = value_of(key, trial.suggest_categorical(key, [_label(choice) for choice in spec.choices]))
    return values


def baseline_point(params: Params, kind: str) -> dict[str, Any]:
    """`kind`'s section values of its searched keys, as Optuna parameters, where the space holds them."""
    section = getattr(params, NETWORKS[kind].section)
    point = {}
    for key, spec in space_for(params, kind).items():
        value = getattr(section, key)
        inside = spec.low <= value <= spec.high if isinstance(spec, FloatRange) else value in spec.choices
        if inside:
            point[key] = _label(value)
    return point
