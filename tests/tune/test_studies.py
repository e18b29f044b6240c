"""The tune stage against real storages: both students tuned alike, exact budgets with two worker processes
(SQLite and a PostgreSQL server started here), real pruning, optuna-dashboard's HTTP API, nested MLflow runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import mlflow
import numpy as np
import optuna
import optuna_dashboard
import pytest
import torch
import yaml
from optuna.trial import TrialState

from hdkd.config import ConfigError, Params, params_from_dict, with_section
from hdkd.data.arrays import save_split
from hdkd.layout import Layout
from hdkd.training.train import train
from hdkd.tune.best import apply_best_params
from hdkd.tune.report import write_disabled
from hdkd.tune.space import TUNED_KINDS, space_for
from hdkd.tune.stage import tune_stage
from hdkd.tune.storage import TuneError, open_storage, study_name
from hdkd.tune.worker import PARENT_RUN_ATTR, run_worker
from tests.helpers import REPO, toy_images
from tests.pg import postgres_server

CLASSES = ["a", "b", "c"]
BUDGET_SPACE = {
    "lr": {"low": 1e-3, "high": 1e-2, "log": True},
    "alpha": {"low": 0.1, "high": 0.9},
    "kind": {"choices": ["soft", "hard"]},
    "stages": {"choices": [[1, 2, 3], [2, 3], [3]]},
}
# Half the trials cannot learn in two epochs: the median pruner must stop some of them.
BAD_SPACE = {"lr": {"choices": [3e-3, 1e-7]}}


def make_params(storage: str, **tune: object) -> Params:
    return params_from_dict(
        {
            "teacher": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "sched": "none"},
            "student": {"batch_size": 16, "sched": "none"},
            "distill": {"batch_size": 16, "sched": "none"},
            "tune": {
                "enabled": True,
                "storage": storage,
                "n_trials": 5,
                "epochs": 2,
                "sampler_startup_trials": 2,
                "pruner_startup_trials": 2,
                "pruner_warmup_epochs": 1,
                "space": BUDGET_SPACE,
                **tune,
            },
        }
    )


@pytest.fixture
def one_thread():
    """Trials in this process: one torch thread, as each spawned worker gets (2 cores, 2 workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Layout:
    """Tiny learnable splits and a teacher trained on them (3 epochs), laid out like the repository."""
    layout = Layout(tmp_path_factory.mktemp("tune"))
    for path, n, seed in ((layout.balanced / "train.npz", 192, 0), (layout.split / "val.npz", 48, 1)):
        path.parent.mkdir(parents=True, exist_ok=True)
        images, labels = toy_images(n, len(CLASSES), seed=seed)
        save_split(path, images, labels, CLASSES, np.arange(n).astype(str))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    params = make_params("sqlite://")
    train(
        params,
        "teacher",
        layout.balanced / "train.npz",
        layout.split / "val.npz",
        layout.models / "teacher",
        progress=False,
    )
    torch.set_num_threads(before)
    return layout


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A real MLflow SQLite store; artifacts land in tmp_path/mlruns (relative to the cwd)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def check_exact_study(
    params: Params, layout: Layout, kind: str, n_trials: int, workers: set[str]
) -> list[optuna.trial.FrozenTrial]:
    """Exactly `n_trials` trials, each run once (one MLflow child run), finished, no duplicate parameters."""
    study = optuna.load_study(study_name=study_name(params, kind, layout), storage=params.tune.storage)
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(n_trials))
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}, [t.state for t in trials]
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == n_trials
    assert all(t.intermediate_values for t in trials)

    client = mlflow.MlflowClient()
    latest = client.get_run(study.user_attrs[PARENT_RUN_ATTR])  # the tune run of the last rerun
    children = client.search_runs(
        [latest.info.experiment_id], filter_string=f"tags.`optuna.study` = '{study.study_name}'"
    )
    by_number = {int(run.data.tags["optuna.trial"]): run for run in children}
    assert len(children) == len(by_number) == n_trials  # a trial claimed twice would have two runs
    for run in children:  # nested under a tune stage run
        assert client.get_run(run.data.tags["mlflow.parentRunId"]).data.tags["stage"] == "tune"
    for trial in trials:
        run = by_number[trial.number]
        assert run.data.tags["optuna.state"] == trial.state.name
        assert run.info.status == {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}[trial.state]
        history = client.get_metric_history(run.info.run_id, "val_macro_f1")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == list(trial.intermediate_values.values())
        assert run.data.tags["tune.kind"] == kind
    assert {run.data.tags["tune.worker"] for run in children} == workers

    section = {"student": "student", "distilled": "distill"}[kind]
    searched = {f"{section}.{key}" for key in space_for(params, kind)}
    assert all(set(run.data.params) == searched for run in children)
    best = json.loads(layout.tuned_params(kind).read_text())
    assert best["enabled"] and best["best_value"] == study.best_value
    assert set(best["overrides"]) == searched
    metrics = json.loads(layout.stage_summary("tune").read_text())
    assert metrics[kind]["n_complete"] + metrics[kind]["n_pruned"] == n_trials and metrics["trials_per_minute"] > 0
    return trials


def two_workers_exact_budget(storage: str, layout: Layout) -> None:
    params = make_params(storage, n_trials=4)
    tune_stage(params, layout, workers=2)
    # Both students alike: the same budget; the plain student searches the shared key (lr) over the same range.
    assert space_for(params, "student") == {"lr": params.tune.space["lr"]}
    first = {kind: check_exact_study(params, layout, kind, 4, workers={"0", "1"}) for kind in TUNED_KINDS}

    # A spent budget creates nothing, even for a worker that joins late.
    assert run_worker(params, 7, layout) == 0

    # A rerun with a larger budget extends the same studies and keeps every finished trial.
    tune_stage(params.model_copy(update={"tune": params.tune.model_copy(update={"n_trials": 5})}), layout, workers=1)
    for kind in TUNED_KINDS:
        extended = check_exact_study(params, layout, kind, 5, workers={"0", "1"})
        kept = [(t.params, t.values, t.state) for t in extended[:4]]
        assert kept == [(t.params, t.values, t.state) for t in first[kind]]


def test_two_workers_share_one_sqlite_study_with_an_exact_budget(workspace, mlflow_store, tmp_path, one_thread):
    two_workers_exact_budget(f"sqlite:///{tmp_path}/optuna.db", workspace)


@pytest.mark.slow  # starts a server
def test_two_workers_share_one_postgresql_study_with_an_exact_budget(workspace, mlflow_store, one_thread):
    with postgres_server() as url:
        two_workers_exact_budget(url, workspace)


@pytest.fixture(scope="module")
def pruned_study(workspace, tmp_path_factory) -> tuple[Params, dict]:
    """One study over a space with bad settings, shared by the pruning and dashboard tests; returns
    its params and best_params.json as written (later tests rewrite the workspace's reports)."""
    root = tmp_path_factory.mktemp("pruned")
    params = make_params(
        f"sqlite:///{root}/optuna.db",
        space=BAD_SPACE,
        n_trials=6,
        epochs=3,  # the plain student learns the toy set in its second epoch: a bad one is behind from then
        sampler_startup_trials=6,  # seeded random draws: good and bad settings mixed
        pruner_startup_trials=1,
        pruner_warmup_epochs=0,
    )
    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        patch.chdir(root)
        torch.set_num_threads(1)
        try:
            tune_stage(params, workspace, workers=1)
        finally:
            torch.set_num_threads(before)
    for kind in TUNED_KINDS:
        for name in ("history", "importances", "intermediate"):
            assert (workspace.reports / "plots" / "tune" / f"{kind}_{name}.png").stat().st_size > 1000
    return params, {kind: json.loads(workspace.tuned_params(kind).read_text()) for kind in TUNED_KINDS}


@pytest.mark.parametrize(("kind", "section"), [("student", "student"), ("distilled", "distill")])
def test_median_pruner_stops_bad_trials(pruned_study, kind, section):
    params, best_of = pruned_study
    best = best_of[kind]
    trials = optuna.load_study(study_name=best["study_name"], storage=params.tune.storage).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.params, t.state, t.intermediate_values) for t in trials]
    assert all(t.intermediate_values and t.params["lr"] == 1e-7 for t in pruned)
    assert best["overrides"] == {f"{section}.lr": 3e-3} and best["n_pruned"] == len(pruned)


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow  # starts a server
def test_dashboard_serves_trials_and_intermediate_values(pruned_study):
    params, best_of = pruned_study
    best = best_of["distilled"]
    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(params.tune.storage), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}/api/studies"
    try:
        with urllib.request.urlopen(base, timeout=30) as response:
            summaries = json.load(response)["study_summaries"]
        (study_id,) = [s["study_id"] for s in summaries if s["study_name"] == best["study_name"]]
        with urllib.request.urlopen(f"{base}/{study_id}?after=0", timeout=30) as response:
            served = {t["number"]: t for t in json.load(response)["trials"]}
    finally:
        server.shutdown()
        thread.join()
    study = optuna.load_study(study_name=best["study_name"], storage=params.tune.storage)
    assert sorted(served) == [t.number for t in study.trials]
    for trial in study.trials:
        shown = served[trial.number]
        assert shown["state"].upper() == trial.state.name
        assert {(p["step"], p["value"]) for p in shown["intermediate_values"]} == set(trial.intermediate_values.items())
    assert any(t["state"].upper() == "PRUNED" and t["intermediate_values"] for t in served.values())


def test_the_disabled_tune_stage_starts_neither_torch_nor_mlflow(tmp_path):
    """Every `hdkd ablate` experiment runs the stage disabled: it writes its outputs in a light process."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tune"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    probe = (
        "import sys; from hdkd.stages import run; run('tune'); print(sorted({'torch', 'mlflow'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert json.loads((tmp_path / "reports/stages/tune.json").read_text()) == {"enabled": False}


def test_disabled_tuning_writes_its_outputs_and_changes_nothing(tmp_path):
    layout = Layout(tmp_path)
    params = make_params("sqlite:///unused.db", enabled=False)
    assert write_disabled(layout) == {"enabled": False}
    enabled = make_params("sqlite:///unused.db")
    for kind in TUNED_KINDS:
        assert json.loads(layout.tuned_params(kind).read_text()) == {"enabled": False}
        assert (layout.reports / "plots" / "tune" / f"{kind}_history.png").is_file()
        assert apply_best_params(params, kind, Layout(tmp_path / "absent")) is params
        assert apply_best_params(enabled, kind, layout) is enabled  # the file says tuning was off


def test_apply_best_params_merges_each_students_overrides_into_its_own_section(tmp_path):
    params = make_params("sqlite:///unused.db")
    layout = Layout(tmp_path)
    layout.tuned_params("distilled").parent.mkdir(parents=True)
    distilled = {"enabled": True, "overrides": {"distill.lr": 0.004, "distill.stages": [2, 3]}}
    layout.tuned_params("distilled").write_text(json.dumps(distilled))
    layout.tuned_params("student").write_text(json.dumps({"enabled": True, "overrides": {"student.lr": 0.006}}))
    tuned = apply_best_params(params, "distilled", layout)
    assert (tuned.distill.lr, tuned.distill.stages) == (0.004, [2, 3])
    assert tuned.distill.epochs == params.distill.epochs and tuned.teacher == params.teacher
    assert tuned.student == params.student
    student = apply_best_params(params, "student", layout)
    assert student.student.lr == 0.006 and student.distill == params.distill
    with pytest.raises(ConfigError, match="run the tune stage first"):
        apply_best_params(params, "distilled", Layout(tmp_path / "absent"))
    layout.tuned_params("distilled").write_text(json.dumps({"enabled": True, "overrides": {"distill.alpha": 3.0}}))
    with pytest.raises(ConfigError, match=r"distill\.alpha"):
        apply_best_params(params, "distilled", layout)
    layout.tuned_params("student").write_text(json.dumps({"enabled": True, "overrides": {"distill.alpha": 0.3}}))
    with pytest.raises(ConfigError, match=r"outside the student section \(distill\.alpha\)"):
        apply_best_params(params, "student", layout)


def test_unusable_storage_is_one_clear_error(tmp_path):
    with pytest.raises(TuneError, match=r"sqlite:///.*/missing/optuna\.db cannot be opened.*tune\.storage"):
        open_storage(f"sqlite:///{tmp_path}/missing/optuna.db")
    with pytest.raises(TuneError, match="cannot be opened") as error:
        open_storage("postgresql+psycopg://user:secret@127.0.0.1:1/optuna")
    assert "secret" not in str(error.value) and "***" in str(error.value)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"epochs": {"choices": [1, 2]}}, "space.epochs: not a distill key"),
        ({"kind": {"low": 0.0, "high": 1.0}}, "distill.kind is not a float"),
        ({"alpha": {"low": 0.5, "high": 2.0}}, "space.alpha: 2.0 is not a valid distill.alpha"),
        ({"stages": {"choices": [[2, 3], [4]]}}, r"space.stages: \[4\] is not a valid distill.stages"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "need 0 < low < high for a log range"),
    ],
)
def test_bad_search_space_names_the_key(space, message):
    with pytest.raises(ConfigError, match=message):
        make_params("sqlite://", space=space)


def test_empty_space_and_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(TuneError, match=r"tune\.space is empty"):
        tune_stage(make_params("sqlite://", space={}), Layout(tmp_path))
    with pytest.raises(TuneError, match=r"searches no key of the student section.*both students are tuned alike"):
        tune_stage(make_params("sqlite://", space={"alpha": {"low": 0.1, "high": 0.9}}), Layout(tmp_path))
    with pytest.raises(TuneError, match=r"train\.npz.*dvc repro train_teacher"):
        tune_stage(make_params("sqlite://"), Layout(tmp_path))


def test_budget_counts_requeued_interruptions_once(workspace, tmp_path):
    """A trial interrupted and re-queued (Optuna's retry callback) is not counted twice."""
    params = make_params(f"sqlite:///{tmp_path}/optuna.db", n_trials=3)
    from hdkd.tune.storage import budget_used, prepare_study

    study, queued = prepare_study(params, "distilled", workspace)
    assert queued == 3 and budget_used(study.trials) == 3
    # The first trial of a new study is params.yaml's own distill setting, where the space holds it
    # (distill.lr 5e-5 lies outside the searched 1e-3..1e-2: the sampler picks that one).
    first = study.trials[0].system_attrs["fixed_params"]
    assert params.distill.lr == 5e-5 and first == {"alpha": params.distill.alpha, "kind": "soft", "stages": "1,2,3"}
    assert all(not trial.system_attrs.get("fixed_params") for trial in study.trials[1:])
    storage = open_storage(params.tune.storage)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), 0)
    assert storage.set_trial_state_values(trial_id, TrialState.RUNNING)
    assert storage.set_trial_state_values(trial_id, TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, storage.get_trial(trial_id))
    assert len(study.trials) == 4 and budget_used(study.trials) == 3
    _, queued = prepare_study(params, "distilled", workspace)
    assert queued == 0 and len(study.trials) == 4


def test_the_study_is_named_after_its_inputs(workspace, tmp_path):
    """Same data, fixed settings (and teacher, for HDKD): the same study (reruns extend it); else a new one."""
    params = make_params("sqlite://")
    name = study_name(params, "distilled", workspace)
    student = study_name(params, "student", workspace)
    assert name.startswith(f"{params.tune.study_name}-distilled-") and student.startswith("hdkd-student-")
    more_trials = params.model_copy(update={"tune": params.tune.model_copy(update={"n_trials": 50})})
    searched_key_moved = with_section(
        params, "distill", {"lr": 0.5, "epochs": 99}
    )  # lr is searched, epochs unused by trials
    assert study_name(more_trials, "distilled", workspace) == study_name(searched_key_moved, "distilled", workspace)
    assert study_name(searched_key_moved, "distilled", workspace) == name
    assert study_name(with_section(params, "distill", {"batch_size": 8}), "distilled", workspace) != name
    assert study_name(with_section(params, "distill", {"batch_size": 8}), "student", workspace) == student
    assert study_name(with_section(params, "student", {"batch_size": 8}), "student", workspace) != student

    other = Layout(tmp_path)
    for path in (workspace.checkpoint("teacher"), workspace.balanced / "train.npz", workspace.split / "val.npz"):
        target = other.root / path.relative_to(workspace.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    assert study_name(params, "distilled", other) == name
    other.checkpoint("teacher").write_bytes(other.checkpoint("teacher").read_bytes() + b"\0")
    assert study_name(params, "distilled", other) != name
    assert study_name(params, "student", other) == student  # the plain student never sees the teacher
