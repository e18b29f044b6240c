"""The `tune` stage: one Optuna study per student, with the same budget (a fair comparison).

Fairness. The plain student and HDKD get the same number of trials (`tune.n_trials` each), the same
epochs per trial, pruner and sampler, and the same search over the optimiser keys they share (the
keys of `tune.space` that the `student` section has: lr, weight_decay, ...); HDKD also searches its
distillation keys. Both are chosen on validation macro-F1 only.

Budget. Each study's total is `tune.n_trials`, over every rerun and every worker, exactly. The
coordinator (`tune_stage`, i.e. `hdkd tune` or the DVC stage) creates the study once and queues
the missing trials as Optuna WAITING trials (`enqueue_trial`); workers only ever *claim* a queued
trial and never create one, so no race can make the total overshoot. A claim is Optuna's own
WAITING -> RUNNING transition, atomic under `SELECT ... FOR UPDATE` on PostgreSQL/MySQL; on
SQLite the transaction takes the write lock at BEGIN (see `_serialise_sqlite`) for the same
effect. A worker stops when the queue is empty (or after `tune.timeout`).

Inputs. A trial's value depends on the data, the fixed settings and (for HDKD) the teacher, so a
study in storage is named after them: `study_name(params, kind)` is `tune.study_name`, the kind and a
digest of those inputs.
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
from hdkd.tune.best import write_best
from hdkd.tune.report import best_overrides, plot_paths, summarize_study, write_plots
from hdkd.tune.space import OBJECTIVE, TUNED_KINDS, space_for
from hdkd.tune.storage import TuneError, masked, prepare_study
from hdkd.tune.worker import PARENT_RUN_ATTR, run_workers, wait_for_other_workers


def tune_stage(params: Params, layout: Layout = REPO, workers: int | None = None) -> dict[str, Any]:
    """The DVC/Prefect stage: prepare both studies, run `workers` (default `tune.workers`), write the reports.

    Writes `reports/tune/<kind>.json` (read by `hdkd.tune.best.apply_best_params` in the student's and HDKD's stages),
    `reports/stages/tune.json` and `reports/plots/tune/<kind>_*.png`; the tune run in MLflow holds one
    nested run per trial, tagged with its `tune.kind`. With `tune.enabled: false` the stage (`hdkd.stages`)
    calls `write_disabled` instead, in a process that never loads what tuning needs, and `hdkd tune` refuses.
    """
    if not params.tune.space:
        raise TuneError("tune.space is empty: declare the keys to search (see params.yaml) or disable tune")
    shared = sorted(space_for(params, "student"))
    if not shared:
        raise TuneError(
            "tune.space searches no key of the student section (e.g. lr, weight_decay): both students are tuned "
            "alike, so declare at least one optimiser key, or disable tune"
        )
    inputs = [layout.balanced / "train.npz", layout.split / "val.npz", layout.checkpoint("teacher")]
    if missing := [str(path) for path in inputs if not path.is_file()]:
        raise TuneError(f"tune needs {', '.join(missing)}: run the stages before it first (dvc repro train_teacher)")
    with stage_run(params, "tune", manifest=layout.balanced / "manifest.csv") as run:
        mlflow.log_params(
            {
                **flat_params(params, ("tune", "model")),
                "tune.space": json.dumps({key: spec.model_dump() for key, spec in params.tune.space.items()}),
            }
        )
        studies = {}
        for kind in TUNED_KINDS:
            study, queued = prepare_study(params, kind, layout)
            study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
            studies[kind] = study
            print(f"tune: study {study.study_name!r} in {masked(params.tune.storage)}, {queued} trial(s) queued")
        began = time.perf_counter()
        ran = run_workers(params, workers or params.tune.workers, layout, run.info.run_id)
        seconds = time.perf_counter() - began
        summary: dict[str, Any] = {
            "enabled": True,
            "shared_keys": shared,
            "distill_keys": sorted(set(params.tune.space) - set(shared)),
        }
        for kind, study in studies.items():
            wait_for_other_workers(study)
            summary[kind] = summarize_study(study)
            write_best(
                layout,
                kind,
                {
                    "enabled": True,
                    "study_name": study.study_name,
                    "overrides": best_overrides(study, kind),
                    **summary[kind],
                },
            )
            write_plots(study, kind, layout)
            mlflow.log_metrics({f"{kind}.{key}": float(value) for key, value in summary[kind].items()})
            mlflow.log_artifact(str(layout.tuned_params(kind)))
            for path in plot_paths(layout, kind).values():
                mlflow.log_artifact(str(path), artifact_path="plots")
        summary["run_trials"] = ran
        summary["trials_per_minute"] = ran / (seconds / 60) if seconds > 0 else 0.0
        mlflow.log_metrics({key: summary[key] for key in ("run_trials", "trials_per_minute")})
        write_json(layout.stage_summary("tune"), summary)
    for kind in TUNED_KINDS:
        study_summary = summary[kind]
        print(
            f"tune {kind}: {study_summary['n_complete']} complete, {study_summary['n_pruned']} pruned, "
            f"{study_summary['n_failed']} failed of {study_summary['n_trials']}; best {OBJECTIVE} "
            f"{study_summary['best_value']:.4f} (trial {study_summary['best_trial']}) -> {layout.tuned_params(kind)}"
        )
    print(f"tune: {ran} trial(s) in this run, {summary['trials_per_minute']:.2f} trials/min")
    return summary
