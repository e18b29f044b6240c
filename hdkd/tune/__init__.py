"""The `tune` stage: an Optuna study over the distillation hyper-parameters of the HDKD student.

Budget. The study's total is `tune.n_trials`, over every rerun and every worker, exactly. The
coordinator (`tune_stage`, i.e. `hdkd tune` or the DVC stage) creates the study once and queues
the missing trials as Optuna WAITING trials (`enqueue_trial`); workers only ever *claim* a queued
trial and never create one, so no race can make the total overshoot. A claim is Optuna's own
WAITING -> RUNNING transition, atomic under `SELECT ... FOR UPDATE` on PostgreSQL/MySQL; on
SQLite the transaction takes the write lock at BEGIN (see `_serialise_sqlite`) for the same
effect. A worker stops when the queue is empty (or after `tune.timeout`).

Inputs. A trial's value depends on the teacher, the data and the fixed settings, so the study in
storage is named after them: `study_name(params)` is `tune.study_name` plus a digest of those inputs.
A rerun with the same inputs extends the same study; after the data or the teacher changed, the
stage starts a new study instead of mixing incomparable trials; a worker joining from another
machine finds the study only if it holds the same teacher and data.

Interruptions. Workers record Optuna heartbeats; the trial of a killed worker goes stale, is
failed and re-queued with the same parameters (`RetryHeartbeatStaleTrialCallback`), and so is a
trial stopped by Ctrl-C. Such interrupted trials do not use up the budget: a rerun finishes the
queue and keeps every finished trial.
"""

from __future__ import annotations

import json
import time
from typing import Any

import mlflow

from hdkd.config import Params
from hdkd.files import write_json
from hdkd.layout import REPO, Layout
from hdkd.tracking import flat_params, stage_run
from hdkd.tune.report import best_overrides, plot_paths, summarize, write_disabled, write_plots
from hdkd.tune.storage import TuneError, masked, prepare_study, study_name
from hdkd.tune.worker import OBJECTIVE, PARENT_RUN_ATTR, run_worker, run_workers, wait_for_other_workers

__all__ = ["TuneError", "run_worker", "run_workers", "study_name", "tune_stage"]


def tune_stage(params: Params, layout: Layout = REPO, workers: int | None = None) -> dict[str, Any]:
    """The DVC/Prefect stage: prepare the study, run `workers` (default `tune.workers`), write the reports.

    Writes `reports/tune/best_params.json` (read by `apply_best_params`), `reports/stages/tune.json`
    and `reports/plots/tune_*.png`; the tune run in MLflow holds one nested run per trial.
    """
    if not params.tune.enabled:
        return write_disabled(layout)
    if not params.tune.space:
        raise TuneError("tune.space is empty: declare the distill keys to search (see params.yaml) or disable tune")
    inputs = [layout.balanced / "train.npz", layout.split / "val.npz", layout.checkpoint("teacher")]
    if missing := [str(path) for path in inputs if not path.is_file()]:
        raise TuneError(f"tune needs {', '.join(missing)}: run the stages before it first (dvc repro train_teacher)")
    study, queued = prepare_study(params, layout)
    with stage_run(params, "tune", manifest=layout.balanced / "manifest.csv") as run:
        mlflow.log_params(
            {
                **flat_params(params, ("tune", "model")),
                "tune.space": json.dumps({key: spec.model_dump() for key, spec in params.tune.space.items()}),
            }
        )
        study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
        print(f"tune: study {study.study_name!r} in {masked(params.tune.storage)}, {queued} trial(s) queued")
        began = time.perf_counter()
        ran = run_workers(params, workers or params.tune.workers, layout, run.info.run_id)
        wait_for_other_workers(study)
        summary = summarize(study, ran, time.perf_counter() - began)
        write_json(
            layout.tuned_params,
            {
                "enabled": True,
                "study_name": study.study_name,
                "overrides": best_overrides(study),
                **{key: summary[key] for key in ("best_value", "best_trial", "n_trials", "n_pruned")},
            },
        )
        write_json(layout.stage_summary("tune"), summary)
        write_plots(study, layout)
        mlflow.log_metrics({key: float(value) for key, value in summary.items()})
        mlflow.log_artifact(str(layout.tuned_params))
        for path in plot_paths(layout).values():
            mlflow.log_artifact(str(path), artifact_path="plots")
    print(
        f"tune: {summary['n_complete']} complete, {summary['n_pruned']} pruned, {summary['n_failed']} failed of "
        f"{summary['n_trials']}; best {OBJECTIVE} {summary['best_value']:.4f} (trial {summary['best_trial']}); "
        f"{summary['trials_per_minute']:.2f} trials/min -> {layout.tuned_params}"
    )
    return summary
