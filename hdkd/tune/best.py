"""The tuned settings of each student, `reports/tune/<kind>.json`: written by the tune stage, applied by the
student's training stage, told by `hdkd summary`. Without Optuna, so the training stages load none of it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hdkd.config import ConfigError, Params, with_section
from hdkd.files import write_json
from hdkd.kinds import NETWORKS
from hdkd.layout import REPO, Layout


def write_best(layout: Layout, kind: str, result: Mapping[str, Any]) -> None:
    """`result` is `{"enabled": False}` or the study's summary with `enabled`, `study_name` and `overrides`."""
    write_json(layout.tuned_params(kind), dict(result))


def apply_best_params(params: Params, kind: str, layout: Layout = REPO) -> Params:
    """`params` with the tune stage's best values for a student `kind` applied; unchanged when tuning is
    disabled. For the `train_student` and `distill` stages: `apply_best_params(load_params(), kind)`."""
    if not params.tune.enabled:
        return params
    section = NETWORKS[kind].section
    path = layout.tuned_params(kind)
    try:
        best = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: not found; run the tune stage first (dvc repro tune) or set tune.enabled: false"
        ) from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error}); run the tune stage again") from None
    if not best.get("enabled"):
        return params
    overrides = best.get("overrides") or {}
    if bad := [key for key in overrides if not key.startswith(f"{section}.")]:
        raise ConfigError(
            f"{path}: overrides outside the {section} section ({', '.join(bad)}); run the tune stage again"
        )
    return with_section(params, section, {key.removeprefix(f"{section}."): value for key, value in overrides.items()})


def tuning_lines(layout: Layout = REPO) -> list[str]:
    """One line per tuned student for `hdkd summary`; none when tuning was off or has not run."""
    lines = []
    for kind in ("student", "distilled"):
        path = layout.tuned_params(kind)
        if not path.is_file() or not (study := json.loads(path.read_text())).get("enabled"):
            continue
        lines.append(
            f"tune {kind}: best val macro-F1 {study['best_value']:.3f} (trial {study['best_trial']}) of "
            f"{study['n_trials']} trials, {study['n_pruned']} pruned; trained with it ({path.relative_to(layout.root)})"
        )
    return lines


def treatment(params: Params) -> str:
    """How the two students were trained, so the reader can judge the comparison's fairness."""
    if params.tune.enabled:
        shared_space = params.tune.shared_space()
        shared = ", ".join(shared_space)
        extra = ", ".join(key for key in params.tune.space if key not in shared_space)
        return (
            f"Both students were tuned alike: {params.tune.n_trials} Optuna trials each ({params.tune.epochs} epochs "
            f"per trial, validation macro-F1), searching the same optimiser keys ({shared}) over the same ranges"
            + (f"; HDKD also searched its distillation keys ({extra})" if extra else "")
            + ". Every setting and checkpoint was chosen on validation; the test split was used once, here."
        )
    return (
        "Neither student was tuned: each trained with its params.yaml section as written; every checkpoint was "
        "chosen on validation macro-F1, and the test split was used once, here."
    )
