"""MLflow: one run per stage, tagged with where it came from; the store that runs and registry share."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import mlflow
from mlflow.exceptions import MlflowException

from hdkd.config import Params
from hdkd.errors import HDKDError
from hdkd.files import pid_alive, sha256_file
from hdkd.layout import run_from_root_hint

if TYPE_CHECKING:
    pass


NOTE = "mlflow.note.content"
# Who runs a stage's MLflow run: a later run of the stage closes a RUNNING run whose process is gone.
PID_TAG, HOST_TAG = "hdkd.pid", "hdkd.host"
# DVC names the experiment in the environment of every stage of `dvc exp run` (queued ones too).
DVC_EXP_ENV, DVC_EXP_TAG = "DVC_EXP_NAME", "dvc.exp_name"
EXPERIMENT_DESCRIPTION = (
    "HDKD pipeline runs: one run per training stage (teacher, plain student, HDKD student), tune (with one "
    "nested run per Optuna trial), evaluate (test metrics with 95% intervals, HDKD against the plain student) "
    "and compile. Runs of `hdkd ablate` carry the tags ablation.batch, ablation.config and ablation.seed. "
    "The runs are under Training runs; the models are in the registry (hdkd-teacher, hdkd-student, "
    "hdkd-student-baseline)."
)


class TrackingError(HDKDError, RuntimeError):
    """The MLflow tracking server named by the params or MLFLOW_TRACKING_URI cannot be used."""


def tracking_uri(params: Params) -> str:
    """`MLFLOW_TRACKING_URI` wins over `mlflow.tracking_uri`, as everywhere else in MLflow.

    Credentials come from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD only: a URI carrying them
    (`http://user:pass@host`) would put them in params.yaml, in git and in every message naming the URI."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = from_env or params.mlflow.tracking_uri
    if urlsplit(uri).password is not None:
        where = "MLFLOW_TRACKING_URI" if from_env else "params.yaml: mlflow.tracking_uri"
        raise TrackingError(
            f"{where} holds a password; remove `user:password@` from it and set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD instead (in the environment, never in params.yaml)"
        )
    return uri


def refusal(error: MlflowException, uri: str, action: str, needs: str, user: str | None = None) -> TrackingError | None:
    """One line for a request the server refused: 401 (who is calling?) or 403 (`user` may not `action`:
    it `needs` a permission); None for any other error. The password is never part of it."""
    status = error.get_http_status_code()
    user = user or os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401 and user:
        return TrackingError(
            f"MLflow server {uri} did not accept the password of user {user!r} (401 Unauthorized): check "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if status == 401:
        return TrackingError(
            f"MLflow server {uri} asks who is calling (401 Unauthorized): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to your account on it (the pipeline's stages: the service user's)"
        )
    if status == 403:
        return TrackingError(
            f"MLflow server {uri} refused to let user {user!r} {action} (403 Permission denied): that needs "
            f"{needs}; ask the server's admin for it"
        )
    return None


@contextlib.contextmanager
def refusals_explained(uri: str, action: str, needs: str, user: str | None = None) -> Iterator[None]:
    """MLflow's 401 and 403 inside the block as one line (`refusal`); other errors pass unchanged."""
    try:
        yield
    except MlflowException as error:
        if (explained := refusal(error, uri, action, needs, user)) is None:
            raise
        raise explained from None


def check_server(uri: str) -> None:
    """Fail fast, with the URI, if a tracking server does not answer: MLflow's own client retries a refused
    connection with back-off for about four minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7, factor 2)."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10):  # noqa: S310 (http(s) only)
                pass
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise TrackingError(
                f"MLflow tracking server {uri} does not answer ({error}); start it or set mlflow.tracking_uri "
                "(or MLFLOW_TRACKING_URI) to a reachable server or to sqlite:///mlflow.db"
            ) from None


def require_store(uri: str) -> None:
    """For commands that only read the store (predict, promote): a SQLite file that does not exist is an error,
    not a new empty store (MLflow would create one wherever the command runs)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise TrackingError(
            f"{uri}: no MLflow store here (run `dvc repro` first to create it); {run_from_root_hint()}, or set "
            "MLFLOW_TRACKING_URI"
        )


def use_store(uri: str) -> None:
    """Runs *and* registry at `uri`: `models:/` URIs are resolved through the registry URI, which
    `set_tracking_uri` alone leaves at MLflow's default (a local ./mlflow.db)."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def setup_tracking(params: Params) -> str:
    """Point MLflow at the store and experiment; fail fast, with the URI, if a server does not answer."""
    uri = tracking_uri(params)
    check_server(uri)
    use_store(uri)
    name = params.mlflow.experiment
    with refusals_explained(uri, f"use experiment {name!r}", f"EDIT permission on experiment {name!r}"):
        experiment = mlflow.set_experiment(name)
        if NOTE not in experiment.tags:  # the description the MLflow UI shows on the experiment page
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, NOTE, EXPERIMENT_DESCRIPTION)
    return uri


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@contextlib.contextmanager
def stage_run(params: Params, stage: str, manifest: str | Path | None = None, **tags: str) -> Iterator[Any]:
    """An MLflow run for one pipeline stage, tagged with git commit, DVC experiment (under `dvc exp run`), stage,
    data manifest hash, pid and host.

    Runs of the same stage that a killed process left RUNNING are marked KILLED first (`close_stale_runs`)."""
    uri = setup_tracking(params)
    run_tags = {"stage": stage, **tags}
    if params.ablation.batch is not None:  # a run of `hdkd ablate`: line it up in MLflow's compare view
        run_tags |= {"ablation.batch": params.ablation.batch, "ablation.config": str(params.ablation.config)}
        run_tags["ablation.seed"] = str(params.student.seed if params.student.seed is not None else params.seed)
    if commit := git_commit():
        run_tags["git_commit"] = commit
    if dvc_exp := os.environ.get(DVC_EXP_ENV):
        run_tags[DVC_EXP_TAG] = dvc_exp
    if manifest is not None and Path(manifest).is_file():
        run_tags["data_manifest_sha256"] = sha256_file(manifest)
    if (experiment := mlflow.get_experiment_by_name(params.mlflow.experiment)) is not None:
        close_stale_runs(experiment.experiment_id, stage)
    run_tags |= {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    experiment_name = params.mlflow.experiment
    needs = f"EDIT permission on experiment {experiment_name!r} (run the pipeline as the service user)"
    with refusals_explained(uri, f"log a run to experiment {experiment_name!r}", needs):
        run = mlflow.start_run(run_name=stage, tags=run_tags)
    with run:
        yield run


def close_stale_runs(experiment_id: str, stage: str, log: Callable[[str], None] = print) -> list[str]:
    """Mark KILLED the runs of `stage` that a killed process left RUNNING; say so in one line each.

    Only runs of the experiment that carry this host's name and the id of a process that no longer
    exists here: a run of another machine, or one whose process still lives (a concurrent run), is left as is.
    """
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    closed = []
    running = client.search_runs(
        [experiment_id],
        filter_string=f"tags.stage = '{stage}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    for stale in running:
        tags = stale.data.tags
        pid = tags.get(PID_TAG, "")
        if tags.get(HOST_TAG) != host or not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        client.set_terminated(stale.info.run_id, status="KILLED")
        closed.append(stale.info.run_id)
        log(
            f"{stage}: MLflow run {stale.info.run_id} was left RUNNING by process {pid} on {host}, which is gone; "
            "marked it KILLED"
        )
    return closed


def flat_params(params: Params, sections: tuple[str, ...]) -> dict[str, Any]:
    """`{"distill.alpha": 0.5, ...}` for the sections a stage depends on."""
    flat: dict[str, Any] = {"seed": params.seed}
    for section in sections:
        for key, value in getattr(params, section).model_dump().items():
            flat[f"{section}.{key}"] = value
    return flat


def pip_requirements() -> list[str]:
    """Pinned from what is installed: MLflow's own inference takes 13-17 s per model."""
    import numpy as np
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"]
