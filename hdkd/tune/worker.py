"""Tuning workers: claim queued trials of the two studies (the plain student's, then HDKD's), train each,
report to Optuna (pruning) and MLflow."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import mlflow
import optuna
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import Trial, TrialState

from hdkd.config import Params, with_section
from hdkd.kinds import NETWORKS
from hdkd.layout import REPO, Layout
from hdkd.tracking import tracking_uri, use_store
from hdkd.training.callbacks import Callback, MlflowCallback
from hdkd.training.distributed import share_cores
from hdkd.tune.space import OBJECTIVE, TUNED_KINDS, space_for, suggest
from hdkd.tune.storage import (
    HEARTBEAT_SECONDS,
    RETRY,
    TuneError,
    make_pruner,
    make_sampler,
    masked,
    open_storage,
    study_name,
)

PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study user attr: where joining workers nest their trial runs
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


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
    kind: str,
    layout: Layout,
    run: tuple[MlflowClient, str, str],
    worker: int,
) -> TrialState:
    client, experiment_id, parent_run_id = run
    section = NETWORKS[kind].section
    study.get_trials(deepcopy=False)  # caches the claimed trial, as `study.ask()` would: a fixed parameter
    trial = Trial(study, trial_id)  # is stored without reading the study, and needs the trial known
    began = time.perf_counter()
    values = suggest(trial, space_for(params, kind))
    tags = {
        MLFLOW_PARENT_RUN_ID: parent_run_id,
        "stage": "tune",
        "tune.kind": kind,
        "optuna.study": study.study_name,
        "optuna.trial": str(trial.number),
        "tune.worker": str(worker),
    }
    run_id = client.create_run(experiment_id, run_name=f"{kind}-trial-{trial.number}", tags=tags).info.run_id
    mlflow.log_params({f"{section}.{key}": value for key, value in values.items()}, run_id=run_id)
    state, value, note = TrialState.FAIL, None, ""
    from hdkd.training.train import train  # torch and the data layer load only where trials run

    try:
        with _heartbeat(storage, trial_id), tempfile.TemporaryDirectory(prefix="hdkd-trial-") as out:
            result = train(
                with_section(params, section, {**values, "epochs": params.tune.epochs}),
                kind,
                layout.balanced / "train.npz",
                layout.split / "val.npz",
                out,
                layout.checkpoint("teacher") if kind == "distilled" else None,
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
            RETRY(study, storage.get_trial(trial_id))
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
    print(
        f"tune worker {worker}: {kind} trial {trial.number} {state.name}{shown} in {time.perf_counter() - began:.1f}s"
    )
    return state


def run_worker(
    params: Params, worker: int, layout: Layout = REPO, parent_run_id: str | None = None, threads: int | None = None
) -> int:
    """Claim and run queued trials of both studies (the plain student's first) until none is left;
    returns how many it ran.

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
    deadline = None if params.tune.timeout is None else time.monotonic() + params.tune.timeout
    use_store(tracking_uri(params))
    client = MlflowClient()
    done = 0
    for kind in TUNED_KINDS:
        study = load_study(params, kind, layout, storage, worker)
        parent = parent_run_id or study.user_attrs.get(PARENT_RUN_ATTR)
        if parent is None:
            raise TuneError(f"study {study.study_name!r} has no MLflow tune run yet: start `hdkd tune` first")
        run = (client, client.get_run(parent).info.experiment_id, parent)
        study_id = storage.get_study_id_from_name(study.study_name)
        while deadline is None or time.monotonic() < deadline:
            fail_stale_trials(study)  # a dead worker's trial is re-queued and picked up here
            trial_id = _claim(storage, study_id)
            if trial_id is None:
                break
            _run_trial(study, storage, trial_id, params, kind, layout, run, worker)
            done += 1
    return done


def load_study(
    params: Params, kind: str, layout: Layout = REPO, storage: RDBStorage | None = None, worker: int = 0
) -> optuna.Study:
    """`kind`'s study as `hdkd tune` created it, with this worker's sampler and the pruner."""
    name = study_name(params, kind, layout)
    try:
        return optuna.load_study(
            study_name=name,
            storage=storage or open_storage(params.tune.storage),
            sampler=make_sampler(params, worker),
            pruner=make_pruner(params.tune),
        )
    except KeyError:
        raise TuneError(
            f"study {name!r} is not in {masked(params.tune.storage)}: start `hdkd tune` (it creates the studies "
            "and queues their trials) before joining workers, with the same teacher, data and params here"
        ) from None


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


def wait_for_other_workers(study: optuna.Study) -> None:
    """Workers joined from other machines may still run trials: the reports wait for them."""
    announced = False
    while running := study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not announced:
            print(f"tune: waiting for trial(s) {[t.number for t in running]} running on other workers")
            announced = True
        time.sleep(HEARTBEAT_SECONDS)
        fail_stale_trials(study)
