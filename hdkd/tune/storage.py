"""Where a study lives: Optuna's RDB storage (SQLite on one machine, PostgreSQL across machines), the
study's name (a digest of what a trial's value depends on), its queue of trials, sampler and pruner."""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner
from optuna.samplers import TPESampler
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from hdkd.config import Params, TuneParams
from hdkd.errors import HDKDError
from hdkd.files import sha256_file
from hdkd.kinds import NETWORKS
from hdkd.layout import REPO, Layout
from hdkd.tune.space import baseline_point, space_for

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60  # a RUNNING trial without a heartbeat for this long belongs to a dead worker
# Heartbeats and their retry callback are how Optuna itself tells dead workers apart; they are
# marked experimental, and would warn on every claim.
warnings.filterwarnings(
    "ignore", r".*(heartbeat|RetryHeartbeatStaleTrialCallback|fail_stale_trials)", optuna.exceptions.ExperimentalWarning
)
RETRY = RetryHeartbeatStaleTrialCallback()


class TuneError(HDKDError, RuntimeError):
    """The study cannot run: unusable storage, missing inputs, or a bad best-params file."""


def masked(url: str) -> str:
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
            heartbeat_stale_trial_callback=RETRY,
        )
    except (SQLAlchemyError, ImportError, ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TuneError(
            f"Optuna storage {masked(url)} cannot be opened ({reason}); set tune.storage to sqlite:///optuna.db "
            "(one machine) or postgresql+psycopg://USER:PASSWORD@HOST:5432/DB (server running, database created)"
        ) from None
    if storage.engine.dialect.name == "sqlite":
        _serialise_sqlite(storage.engine)
    return storage


def budget_used(trials: list[FrozenTrial]) -> int:
    """Trials that count against `n_trials`: all, except interrupted ones that were re-queued."""
    retried = {number for trial in trials for number in RetryHeartbeatStaleTrialCallback.retry_history(trial)}
    return len(trials) - len(retried)


def study_name(params: Params, kind: str, layout: Layout = REPO) -> str:
    """`<tune.study_name>-<kind>-<digest>`, the digest over what a trial's value depends on besides the
    searched keys: the data, the fixed settings of `kind`'s section and, for HDKD, the teacher."""
    section = NETWORKS[kind].section
    files = [("train", layout.balanced / "train.npz"), ("val", layout.split / "val.npz")]
    if kind == "distilled":
        files.append(("teacher", layout.checkpoint("teacher")))
    inputs = {
        "files": {name: sha256_file(path) for name, path in files},
        section: getattr(params, section).model_dump(exclude={"epochs", *space_for(params, kind)}),
        "model": params.model.model_dump(),
        "image_size": params.data.image_size,
        "epochs": params.tune.epochs,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return f"{params.tune.study_name}-{kind}-{digest[:8]}"


def prepare_study(params: Params, kind: str, layout: Layout = REPO) -> tuple[optuna.Study, int]:
    """Create (or load) `kind`'s study and queue the trials still missing from `n_trials`; run once,
    before any worker starts. Returns the study and how many trials it queued."""
    study = optuna.create_study(
        storage=open_storage(params.tune.storage),
        study_name=study_name(params, kind, layout),
        direction="maximize",
        load_if_exists=True,
    )
    fail_stale_trials(study)  # trials of workers killed in an earlier run go back to the queue first
    trials = study.get_trials(deepcopy=False)
    missing = max(0, params.tune.n_trials - budget_used(trials))
    for number in range(missing):
        # A new study's first trial is params.yaml's own setting: the best found is then never worse,
        # on the trials' measure, than training without tuning.
        study.enqueue_trial(baseline_point(params, kind) if number == 0 and not trials else {})
    return study, missing


def make_sampler(params: Params, worker: int) -> TPESampler:
    """Seeded TPE, one seed per worker: equal seeds would propose equal parameter sets."""
    return TPESampler(seed=params.seed + worker, n_startup_trials=params.tune.sampler_startup_trials)


def make_pruner(tune: TuneParams) -> BasePruner:
    if tune.pruner == "median":
        return MedianPruner(n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=tune.pruner_warmup_epochs)
    if tune.pruner == "hyperband":
        return HyperbandPruner(min_resource=1, max_resource=tune.epochs, reduction_factor=3)
    return NopPruner()
