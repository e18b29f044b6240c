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

import contextlib
import hashlib
import json
import multiprocessing
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, get_origin

import mlflow
import optuna
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.exceptions import UpdateFinishedTrialError
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner
from optuna.samplers import TPESampler
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, Trial, TrialState
from pydantic import ValidationError
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from hdkd.config import Choice, DistillParams, FloatRange, Params, TuneParams
from hdkd.distributed import share_cores
from hdkd.engine import Callback
from hdkd.errors import HDKDError
from hdkd.io import atomic_path, sha256_file, write_json
from hdkd.layout import REPO, Layout
from hdkd.tracking import MlflowCallback, flat_params, stage_run, tracking_uri

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60  # a RUNNING trial without a heartbeat for this long belongs to a dead worker
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study user attr: where joining workers nest their trial runs
OBJECTIVE = "val_macro_f1"
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}
# Heartbeats and their retry callback are how Optuna itself tells dead workers apart; they are
# marked experimental, and would warn on every claim.
warnings.filterwarnings(
    "ignore", r".*(heartbeat|RetryHeartbeatStaleTrialCallback|fail_stale_trials)", optuna.exceptions.ExperimentalWarning
)
_RETRY = RetryHeartbeatStaleTrialCallback()


class TuneError(HDKDError, RuntimeError):
    """The study cannot run: unusable storage, missing inputs, or a bad best-params file."""


# --- storage and study ---------------------------------------------------------------------------


def _masked(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return url


def _serialise_sqlite(engine: Engine) -> None:
    """Make every SQLite transaction take the write lock at BEGIN (SQLAlchemy's pysqlite recipe).

    pysqlite only opens a transaction at the first write, so two processes can both read a queued
    trial as WAITING and both claim it: 4 workers over 300 queued trials ran several twice here.
    With BEGIN IMMEDIATE, Optuna's read-check-write claim is atomic, as FOR UPDATE makes it on PostgreSQL.
    """

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the pool holds connections opened before the hooks


def open_storage(url: str) -> RDBStorage:
    """Optuna's RDB storage with heartbeats (dead workers' trials are re-queued), or one clear error."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        storage = RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=_RETRY,
        )
    except (SQLAlchemyError, ImportError, ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TuneError(
            f"Optuna storage {_masked(url)} cannot be opened ({reason}); set tune.storage to sqlite:///optuna.db "
            "(one machine) or postgresql+psycopg://USER:PASSWORD@HOST:5432/DB (server running, database created)"
        ) from None
    if storage.engine.dialect.name == "sqlite":
        _serialise_sqlite(storage.engine)
    return storage


def budget_used(trials: list[FrozenTrial]) -> int:
    """Trials that count against `n_trials`: all, except interrupted ones that were re-queued."""
    retried = {number for trial in trials for number in RetryHeartbeatStaleTrialCallback.retry_history(trial)}
    return len(trials) - len(retried)


def study_name(params: Params, layout: Layout = REPO) -> str:
    """`tune.study_name` + a digest of what a trial's value depends on besides the searched keys."""
    fixed = params.distill.model_dump(exclude={"epochs", *params.tune.space})
    inputs = {
        "files": {
            name: sha256_file(path)
            for name, path in (
                ("teacher", layout.checkpoint("teacher")),
                ("train", layout.balanced / "train.npz"),
                ("val", layout.split / "val.npz"),
            )
        },
        "distill": fixed,
        "model": params.model.model_dump(),
        "image_size": params.data.image_size,
        "epochs": params.tune.epochs,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return f"{params.tune.study_name}-{digest[:8]}"


def prepare_study(params: Params, layout: Layout = REPO) -> tuple[optuna.Study, int]:
    """Create (or load) the study and queue the trials still missing from `n_trials`; run once,
    before any worker starts. Returns the study and how many trials it queued."""
    study = optuna.create_study(
        storage=open_storage(params.tune.storage),
        study_name=study_name(params, layout),
        direction="maximize",
        load_if_exists=True,
    )
    fail_stale_trials(study)  # trials of workers killed in an earlier run go back to the queue first
    trials = study.get_trials(deepcopy=False)
    missing = max(0, params.tune.n_trials - budget_used(trials))
    for number in range(missing):
        # A new study's first trial is params.yaml's own setting: the best found is then never worse,
        # on the trials' measure, than distilling without tuning.
        study.enqueue_trial(baseline_point(params) if number == 0 and not trials else {})
    return study, missing


def baseline_point(params: Params) -> dict[str, Any]:
    """The distill section's values of the searched keys, as Optuna parameters, where the space holds them."""
    point = {}
    for key, spec in params.tune.space.items():
        value = getattr(params.distill, key)
        inside = spec.low <= value <= spec.high if isinstance(spec, FloatRange) else value in spec.choices
        if inside:
            point[key] = _label(value)
    return point


def make_sampler(params: Params, worker: int) -> TPESampler:
    """Seeded TPE, one seed per worker: equal seeds would propose equal parameter sets."""
    return TPESampler(seed=params.seed + worker, n_startup_trials=params.tune.sampler_startup_trials)


def make_pruner(tune: TuneParams) -> BasePruner:
    if tune.pruner == "median":
        return MedianPruner(n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=tune.pruner_warmup_epochs)
    if tune.pruner == "hyperband":
        return HyperbandPruner(min_resource=1, max_resource=tune.epochs, reduction_factor=3)
    return NopPruner()


# --- search space ---------------------------------------------------------------------------------


def _label(choice: Any) -> Any:
    """Optuna's categorical values are scalars: a list of stages is searched as "2,3"."""
    return ",".join(str(item) for item in choice) if isinstance(choice, list) else choice


def _value(key: str, label: Any) -> Any:
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
            values[key] = _value(key, trial.suggest_categorical(key, [_label(choice) for choice in spec.choices]))
    return values


def with_distill(params: Params, values: dict[str, Any]) -> Params:
    """`params` with `values` merged into the distill section, validated like params.yaml."""
    try:
        distill = DistillParams.model_validate({**params.distill.model_dump(), **values})
    except ValidationError as error:
        item = error.errors()[0]
        raise TuneError(
            f"distill.{'.'.join(map(str, item['loc']))}: {item['msg']} (got {item.get('input')!r})"
        ) from None
    return params.model_copy(update={"distill": distill})


# --- workers --------------------------------------------------------------------------------------


class _ReportAndPrune(Callback):
    def __init__(self, trial: Trial, epochs: int):
        self.trial, self.epochs = trial, epochs

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.trial.report(metrics[OBJECTIVE], epoch)
        # After the last epoch there is nothing left to save: the trial is complete, whatever its rank.
        if epoch + 1 < self.epochs and self.trial.should_prune():
            raise optuna.TrialPruned(
                f"epoch {epoch + 1}: {OBJECTIVE} {metrics[OBJECTIVE]:.4f} is below the pruner's bar"
            )


@contextlib.contextmanager
def _heartbeat(storage: RDBStorage, trial_id: int) -> Iterator[None]:
    """What `study.optimize` records for a trial: proof of life for `fail_stale_trials`."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, name=f"optuna-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _claim(storage: RDBStorage, study_id: int) -> int | None:
    """Move one queued trial to RUNNING; None when the queue is empty. Never creates a trial."""
    for queued in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, queued.number)
        with contextlib.suppress(UpdateFinishedTrialError):  # finished by another worker meanwhile
            if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                return trial_id
    return None


def _run_trial(
    study: optuna.Study,
    storage: RDBStorage,
    trial_id: int,
    params: Params,
    layout: Layout,
    run: tuple[MlflowClient, str, str],
    worker: int,
) -> TrialState:
    client, experiment_id, parent_run_id = run
    study.get_trials(deepcopy=False)  # caches the claimed trial, as `study.ask()` would: a fixed parameter
    trial = Trial(study, trial_id)  # is stored without reading the study, and needs the trial known
    began = time.perf_counter()
    values = suggest(trial, params.tune.space)
    tags = {
        MLFLOW_PARENT_RUN_ID: parent_run_id,
        "stage": "tune",
        "optuna.study": study.study_name,
        "optuna.trial": str(trial.number),
        "tune.worker": str(worker),
    }
    run_id = client.create_run(experiment_id, run_name=f"trial-{trial.number}", tags=tags).info.run_id
    mlflow.log_params({f"distill.{key}": value for key, value in values.items()}, run_id=run_id)
    state, value, note = TrialState.FAIL, None, ""
    from hdkd.train import train  # torch and the data layer load only where trials run

    try:
        with _heartbeat(storage, trial_id), tempfile.TemporaryDirectory(prefix="hdkd-trial-") as out:
            result = train(
                with_distill(params, {**values, "epochs": params.tune.epochs}),
                "distilled",
                layout.balanced / "train.npz",
                layout.split / "val.npz",
                out,
                layout.checkpoint("teacher"),
                callbacks=[MlflowCallback(run_id), _ReportAndPrune(trial, params.tune.epochs)],
                progress=False,
            )
        state, value = TrialState.COMPLETE, result.best_score
    except optuna.TrialPruned as pruned:
        state, note = TrialState.PRUNED, str(pruned)
    except FloatingPointError as error:  # a diverging setting is a result of the search, not a crash
        trial.set_user_attr("error", str(error))
        note = str(error)
    except BaseException as error:
        study.tell(trial, state=TrialState.FAIL)
        if isinstance(error, KeyboardInterrupt):  # interrupted, not failed: back to the queue, off the budget
            _RETRY(study, storage.get_trial(trial_id))
        client.set_tag(run_id, "optuna.state", TrialState.FAIL.name)
        client.set_terminated(run_id, RUN_STATUS[TrialState.FAIL])
        raise
    if value is not None:
        study.tell(trial, value)
    else:
        study.tell(trial, state=state)
    client.set_tag(run_id, "optuna.state", state.name)
    client.set_terminated(run_id, RUN_STATUS[state])
    shown = f" {OBJECTIVE} {value:.4f}" if value is not None else f" ({note})"
    print(f"tune worker {worker}: trial {trial.number} {state.name}{shown} in {time.perf_counter() - began:.1f}s")
    return state


def run_worker(
    params: Params, worker: int, layout: Layout = REPO, parent_run_id: str | None = None, threads: int | None = None
) -> int:
    """Claim and run queued trials of the study until none is left; returns how many it ran.

    `worker` numbers the sampler seed (`seed + worker`): give every worker of a study its own.
    `threads` is set for one of several worker processes sharing a machine: its share of the
    cores, and no DataLoader processes (in a spawned worker they are spawned too, re-importing
    torch every epoch: 20x slower trials measured here).
    """
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        params = params.model_copy(update={"data": params.data.model_copy(update={"num_workers": 0})})
    else:
        share_cores(params.data.num_workers)
    storage = open_storage(params.tune.storage)
    name = study_name(params, layout)
    try:
        study = optuna.load_study(
            study_name=name,
            storage=storage,
            sampler=make_sampler(params, worker),
            pruner=make_pruner(params.tune),
        )
    except KeyError:
        raise TuneError(
            f"study {name!r} is not in {_masked(params.tune.storage)}: start `hdkd tune` (it creates the study "
            "and queues its trials) before joining workers, with the same teacher, data and params here"
        ) from None
    parent_run_id = parent_run_id or study.user_attrs.get(PARENT_RUN_ATTR)
    if parent_run_id is None:
        raise TuneError(f"study {name!r} has no MLflow tune run yet: start `hdkd tune` first")
    mlflow.set_tracking_uri(tracking_uri(params))
    client = MlflowClient()
    run = (client, client.get_run(parent_run_id).info.experiment_id, parent_run_id)
    study_id = storage.get_study_id_from_name(name)
    deadline = None if params.tune.timeout is None else time.monotonic() + params.tune.timeout
    done = 0
    while deadline is None or time.monotonic() < deadline:
        fail_stale_trials(study)  # a dead worker's trial is re-queued and picked up here
        trial_id = _claim(storage, study_id)
        if trial_id is None:
            break
        _run_trial(study, storage, trial_id, params, layout, run, worker)
        done += 1
    return done


def run_workers(
    params: Params, workers: int, layout: Layout = REPO, parent_run_id: str | None = None, first_worker: int = 0
) -> int:
    """`workers` processes (spawned: torch and fork do not mix) sharing the cores; one runs in-process."""
    if workers == 1:
        return run_worker(params, first_worker, layout, parent_run_id)
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(run_worker, params, first_worker + i, layout, parent_run_id, threads) for i in range(workers)
        ]
        return sum(future.result() for future in futures)


def _wait_for_other_workers(study: optuna.Study) -> None:
    """Workers joined from other machines may still run trials: the reports wait for them."""
    announced = False
    while running := study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not announced:
            print(f"tune: waiting for trial(s) {[t.number for t in running]} running on other workers")
            announced = True
        time.sleep(HEARTBEAT_SECONDS)
        fail_stale_trials(study)


# --- reports --------------------------------------------------------------------------------------


def best_params_path(layout: Layout = REPO) -> Path:
    return layout.reports / "tune" / "best_params.json"


def _plot_paths(layout: Layout) -> dict[str, Path]:
    plots = layout.reports / "plots"
    return {name: plots / f"tune_{name}.png" for name in ("history", "importances", "intermediate")}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    _pyplot().close(figure)


def _note(path: Path, title: str, text: str) -> None:
    """A plot that says why it has nothing to show (DVC expects every declared output)."""
    figure, ax = _pyplot().subplots()
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    _save(figure, path)


def write_plots(study: optuna.Study, layout: Layout = REPO) -> None:
    """Optimisation history, parameter importances and intermediate values (Optuna's matplotlib plots)."""
    _pyplot()
    from optuna.visualization import matplotlib as plots

    paths = _plot_paths(layout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _save(plots.plot_optimization_history(study, target_name=OBJECTIVE).figure, paths["history"])
        _save(plots.plot_intermediate_values(study).figure, paths["intermediate"])
        try:
            _save(plots.plot_param_importances(study, target_name=OBJECTIVE).figure, paths["importances"])
        except (ValueError, RuntimeError) as error:  # fewer than two complete trials, or a constant space
            _note(paths["importances"], "Hyperparameter importances", f"not computable yet: {error}")


def best_overrides(study: optuna.Study) -> dict[str, Any]:
    """The best trial's parameters as dotted distill overrides (`{"distill.stages": [2, 3], ...}`)."""
    return {f"distill.{key}": _value(key, label) for key, label in study.best_trial.params.items()}


def summarize(study: optuna.Study, run_trials: int, run_seconds: float) -> dict[str, Any]:
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
        "run_trials": run_trials,
        "trials_per_minute": run_trials / (run_seconds / 60) if run_seconds > 0 else 0.0,
    }


def _write_disabled(layout: Layout) -> dict[str, Any]:
    summary = {"enabled": False}
    write_json(best_params_path(layout), summary)
    write_json(layout.metrics / "tune.json", summary)
    for name, path in _plot_paths(layout).items():
        _note(path, f"tune: {name}", "tuning disabled (tune.enabled: false): distill uses params.yaml as it is")
    print("tune: disabled (tune.enabled: false); distill uses params.yaml as it is")
    return summary


def tune_stage(params: Params, layout: Layout = REPO, workers: int | None = None) -> dict[str, Any]:
    """The DVC/Prefect stage: prepare the study, run `workers` (default `tune.workers`), write the reports.

    Writes `reports/tune/best_params.json` (read by `apply_best_params`), `reports/metrics/tune.json`
    and `reports/plots/tune_*.png`; the tune run in MLflow holds one nested run per trial.
    """
    if not params.tune.enabled:
        return _write_disabled(layout)
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
        print(f"tune: study {study.study_name!r} in {_masked(params.tune.storage)}, {queued} trial(s) queued")
        began = time.perf_counter()
        ran = run_workers(params, workers or params.tune.workers, layout, run.info.run_id)
        _wait_for_other_workers(study)
        summary = summarize(study, ran, time.perf_counter() - began)
        write_json(
            best_params_path(layout),
            {
                "enabled": True,
                "study_name": study.study_name,
                "overrides": best_overrides(study),
                **{key: summary[key] for key in ("best_value", "best_trial", "n_trials", "n_pruned")},
            },
        )
        write_json(layout.metrics / "tune.json", summary)
        write_plots(study, layout)
        mlflow.log_metrics({key: float(value) for key, value in summary.items()})
        mlflow.log_artifact(str(best_params_path(layout)))
        for path in _plot_paths(layout).values():
            mlflow.log_artifact(str(path), artifact_path="plots")
    print(
        f"tune: {summary['n_complete']} complete, {summary['n_pruned']} pruned, {summary['n_failed']} failed of "
        f"{summary['n_trials']}; best {OBJECTIVE} {summary['best_value']:.4f} (trial {summary['best_trial']}); "
        f"{summary['trials_per_minute']:.2f} trials/min -> {best_params_path(layout)}"
    )
    return summary


def apply_best_params(params: Params, path: str | Path | None = None) -> Params:
    """`params` with the tuned distill values applied; unchanged when tuning is disabled.

    For the `distill` stage: `params = apply_best_params(load_params())`.
    """
    if not params.tune.enabled:
        return params
    path = Path(path) if path is not None else best_params_path()
    try:
        best = json.loads(path.read_text())
    except FileNotFoundError:
        raise TuneError(
            f"{path}: not found; run the tune stage first (dvc repro tune) or set tune.enabled: false"
        ) from None
    except json.JSONDecodeError as error:
        raise TuneError(f"{path}: not valid JSON ({error}); run the tune stage again") from None
    if not best.get("enabled"):
        return params
    overrides = best.get("overrides") or {}
    if bad := [key for key in overrides if not key.startswith("distill.")]:
        raise TuneError(f"{path}: overrides outside the distill section ({', '.join(bad)}); run the tune stage again")
    return with_distill(params, {key.removeprefix("distill."): value for key, value in overrides.items()})
