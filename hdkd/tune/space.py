"""The search space: `tune.space` sampled as distill values, and params.yaml's own setting as a point."""

from __future__ import annotations

from typing import Any, get_origin

from optuna.trial import Trial

from hdkd.config import Choice, DistillParams, FloatRange, Params


def _label(choice: Any) -> Any:
    """Optuna's categorical values are scalars: a list of stages is searched as "2,3"."""
    return ",".join(str(item) for item in choice) if isinstance(choice, list) else choice


def value_of(key: str, label: Any) -> Any:
    if isinstance(label, str) and get_origin(DistillParams.model_fields[key].annotation) is list:
        return [int(item) for item in label.split(",") if item]
    return label


def suggest(trial: Trial, space: dict[str, FloatRange | Choice]) -> dict[str, Any]:
    """Sample one point of `tune.space`, as distill values (stages as lists)."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, FloatRange):
            values[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
        else:
            values[key] = value_of(key, trial.suggest_categorical(key, [_label(choice) for choice in spec.choices]))
    return values


def baseline_point(params: Params) -> dict[str, Any]:
    """The distill section's values of the searched keys, as Optuna parameters, where the space holds them."""
    point = {}
    for key, spec in params.tune.space.items():
        value = getattr(params.distill, key)
        inside = spec.low <= value <= spec.high if isinstance(spec, FloatRange) else value in spec.choices
        if inside:
            point[key] = _label(value)
    return point
