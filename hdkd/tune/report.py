"""What the studies leave behind: best parameters for the two student stages, a summary and Optuna's plots."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hdkd.files import save_figure, write_json
from hdkd.kinds import NETWORKS
from hdkd.layout import REPO, Layout
from hdkd.tune.best import write_best
from hdkd.tune.space import OBJECTIVE, TUNED_KINDS, value_of
from hdkd.tune.storage import TuneError

PLOTS = ("history", "importances", "intermediate")


def plot_paths(layout: Layout, kind: str) -> dict[str, Path]:
    return {name: layout.reports / "plots" / "tune" / f"{kind}_{name}.png" for name in PLOTS}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save_plot(figure: Any, path: Path) -> None:
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    save_figure(figure, path)
    _pyplot().close(figure)


def _note(path: Path, title: str, text: str) -> None:
    """A plot that says why it has nothing to show (DVC expects every declared output)."""
    figure, ax = _pyplot().subplots()
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    _save_plot(figure, path)


def write_plots(study: optuna.Study, kind: str, layout: Layout = REPO) -> None:
    """Optimisation history, parameter importances and intermediate values (Optuna's matplotlib plots)."""
    _pyplot()
    from optuna.visualization import matplotlib as plots

    paths = plot_paths(layout, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _save_plot(plots.plot_optimization_history(study, target_name=OBJECTIVE).figure, paths["history"])
        _save_plot(plots.plot_intermediate_values(study).figure, paths["intermediate"])
        try:
            _save_plot(plots.plot_param_importances(study, target_name=OBJECTIVE).figure, paths["importances"])
        except (ValueError, RuntimeError) as error:  # fewer than two complete trials, or a constant space
            _note(paths["importances"], "Hyperparameter importances", f"not computable yet: {error}")


def best_overrides(study: optuna.Study, kind: str) -> dict[str, Any]:
    """The best trial's parameters as dotted overrides of `kind`'s section (`{"distill.stages": [2, 3], ...}`)."""
    section = NETWORKS[kind].section
    return {f"{section}.{key}": value_of(key, label) for key, label in study.best_trial.params.items()}


def summarize_study(study: optuna.Study) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    finished = count[TrialState.COMPLETE] + count[TrialState.PRUNED] + count[TrialState.FAIL]
    if not count[TrialState.COMPLETE]:
        raise TuneError(
            f"study {study.study_name!r} has no complete trial ({count[TrialState.PRUNED]} pruned, "
            f"{count[TrialState.FAIL]} failed); loosen the pruner or widen tune.space, then rerun"
        )
    return {
        "best_value": study.best_value,
        "best_trial": study.best_trial.number,
        "n_trials": len(trials),
        "n_complete": count[TrialState.COMPLETE],
        "n_pruned": count[TrialState.PRUNED],
        "n_failed": count[TrialState.FAIL],
        "n_waiting": count[TrialState.WAITING],
        "pruned_share": count[TrialState.PRUNED] / finished,
    }


def write_disabled(layout: Layout) -> dict[str, Any]:
    summary = {"enabled": False}
    for kind in TUNED_KINDS:
        write_best(layout, kind, summary)
        for name, path in plot_paths(layout, kind).items():
            _note(path, f"tune {kind}: {name}", "tuning disabled (tune.enabled: false): neither student is tuned")
    write_json(layout.stage_summary("tune"), summary)
    print("tune: disabled (tune.enabled: false); neither student is tuned, both train with params.yaml as it is")
    return summary
