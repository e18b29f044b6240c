"""Issues 15 and 26, working as a team: one shared MLflow server (PostgreSQL store, proxied artifacts) that asks
who is calling (MLflow's basic-auth app, started by `hdkd.servers.team_mlflow`), a DVC remote round trip into a
second clone, a Prefect work pool behind an API auth string served by a real worker that runs queued flow runs
one at a time, and no stale state (RUNNING MLflow runs, temporary folders) left behind by a SIGKILLed stage.

Outsiders are refused: an anonymous request, a wrong password, a reader moving @champion, a Prefect client
without the auth string. No password turns up in MLflow, the logs, the reports or the DVC files.

Real servers on 127.0.0.1, real processes and signals; the expensive part (one tiny `dvc repro` against the
MLflow server, as the pipeline's service user) is a module fixture shared by the slow tests.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from flows.local import prefect_env
from hdkd.files import atomic_dir, remove_stale_temps
from hdkd.servers import LOOPBACK, TeamError, credentials, team_mlflow
from tests.helpers import free_port, wait_http
from tests.pg import postgres_server
from tests.repo import REPO, VENV_BIN, env, kill_group, make_repo, run, start_group

ONE_THREAD = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # this checkout's code, one thread

# Tune off and ONNX only: the chain exercises every stage and the registry in about a minute.
FAST = {"tune": {"enabled": False}, "compile": {"targets": ["onnx"], "latency_repeats": 3}}
STUDENT = "hdkd-student"

# Every password of the module holds SECRET: the leak check looks for it (and for the Basic headers) everywhere.
SECRET = f"Sesame{secrets.token_hex(6)}"
SERVICE, MAINTAINER, READER = "hdkd-pipeline", "maya", "rita"
PASSWORDS = {name: f"{name}-{SECRET}" for name in ("admin", SERVICE, MAINTAINER, READER)}
PREFECT_AUTH = f"hdkd:prefect-{SECRET}"


# -- helpers ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def background(cmd: list[str], log: Path, **popen: object) -> Iterator[subprocess.Popen]:
    """A process in its own group, its output in `log`; SIGTERM to the group at the end, SIGKILL if it stays."""
    with open(log, "wb") as output:
        process = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, **popen)  # type: ignore[call-overload]
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until(condition: Callable[[], bool], what: str, timeout: float, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process ended ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def as_user(name: str, password: str | None = None) -> dict[str, str]:
    """The environment of a client that logs in as `name` (MLflow's standard credential variables)."""
    return {"MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": password or PASSWORDS[name]}


def secret_forms() -> list[bytes]:
    """The shared part of every password, and every Basic authorization header a client of the module sent."""
    pairs = [f"{name}:{password}" for name, password in PASSWORDS.items()] + [PREFECT_AUTH]
    return [SECRET.encode()] + [base64.b64encode(pair.encode()) for pair in pairs]


def assert_no_secret(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    leaked = [form.decode() for form in secret_forms() if form in data]
    assert not leaked, f"a credential in {where}"


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line a refused `hdkd` command ends with: no traceback, no password."""
    said = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in said, said[-3000:]
    (line,) = [text for text in said.splitlines() if text.startswith("error:")]
    assert_no_secret(said, "an error message")
    return line


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    artifacts: Path
    log: Path


@dataclass(frozen=True)
class Tracked:
    server: MlflowServer
    repo: Path
    remote: Path
    repro: str  # the output of the first `dvc repro`


# -- 1. one MLflow server for everyone ---------------------------------------------------------------


def write_team(folder: Path) -> Path:
    """The team folder `hdkd team-mlflow` reads: roles in team.yaml, one owner-only password file per user."""
    team = {"service": SERVICE, "maintainers": [MAINTAINER], "readers": [READER]}
    (folder / "team.yaml").write_text(yaml.safe_dump(team))
    (folder / "passwords").mkdir(mode=0o700)
    for name, password in PASSWORDS.items():
        (folder / "passwords" / name).write_text(password + "\n")
        (folder / "passwords" / name).chmod(0o600)
    return folder


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    """The team's MLflow server as the project starts it: basic auth, users in the PostgreSQL store, uploads
    and downloads through its artifact proxy."""
    root = tmp_path_factory.mktemp("mlflow-server")
    artifacts, log = root / "artifacts", root / "server.log"
    team = write_team(tmp_path_factory.mktemp("team"))
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(postgres_server("mlflow"))
        output = stack.enter_context(open(log, "wb"))
        try:
            running = stack.enter_context(
                team_mlflow(team, database, str(artifacts), LOOPBACK, free_port(), None, output)
            )
        except (TimeoutError, RuntimeError) as error:
            raise AssertionError(f"{error}\n{tail(log)}") from None
        assert running.users == [
            f"{SERVICE}: service (EDIT on every experiment, EDIT on every registered_model)",
            f"{MAINTAINER}: maintainer (MANAGE on every registered_model)",
            f"{READER}: reader (READ (the default))",
        ]
        yield MlflowServer(running.uri, artifacts, log)


@pytest.fixture(scope="module")
def tracked(mlflow_server, tmp_path_factory) -> Tracked:
    """A tiny copy of the repository with a default folder remote, after one `dvc repro` tracked by the server
    and `dvc push`, committed (dvc.lock and all) so that it can be cloned."""
    repo = make_repo(tmp_path_factory.mktemp("tracked"), FAST)
    remote = tmp_path_factory.mktemp("dvc-remote")
    run(["dvc", "remote", "add", "-d", "storage", str(remote)], repo)
    began = time.monotonic()
    # Every stage, the register stage included, as the service user.
    pipeline_env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, **as_user(SERVICE)}
    done = run(["dvc", "repro"], repo, timeout=1800, extra_env=pipeline_env)
    print(f"dvc repro against the MLflow server: {time.monotonic() - began:.0f} s")
    run(["dvc", "push"], repo, timeout=300)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "pipeline run"], repo)
    return Tracked(mlflow_server, repo, remote, done.stdout + done.stderr)


def client_for(server: MlflowServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)


def images(repo: Path, count: int) -> list[Path]:
    return sorted((repo / "data" / "raw").rglob("*.png"))[:count]


def predictions(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_shared_mlflow_server_holds_every_run_model_and_version_and_serves_the_champion(tracked, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever MLflow's client defaults to (./mlflow.db) stays out of the checkout
    for name, value in as_user(READER).items():  # a reader reads it all (the server's default permission)
        monkeypatch.setenv(name, value)
    import mlflow
    from mlflow.artifacts import download_artifacts

    server, repo = tracked.server, tracked.repo
    client = client_for(server)
    experiment = client.get_experiment_by_name("hdkd")
    assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    stages = {run.data.tags.get("stage") for run in runs}
    assert {"train_teacher", "train_student", "train_distilled", "evaluate", "compile"} <= stages, stages
    assert all(run.info.status == "FINISHED" for run in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert all(run.info.artifact_uri.startswith("mlflow-artifacts:") for run in runs)

    # Every logged model is on the server, and its files come back through the artifact proxy.
    for kind in ("teacher", "student", "distilled"):
        logged = json.loads((repo / "models" / kind / "mlflow.json").read_text())
        run_ids = {run.info.run_id for run in runs}
        assert logged["run_id"] in run_ids
        model = client.get_logged_model(logged["model_uri"].removeprefix("models:/"))
        assert model.source_run_id == logged["run_id"] and model.artifact_location.startswith("mlflow-artifacts:")
    stored = [path for path in server.artifacts.rglob("*") if path.is_file()]
    assert any(path.name == "MLmodel" for path in stored) and any(path.suffix == ".onnx" for path in stored)

    # Registration and aliases, through the server.
    for name in ("hdkd-teacher", STUDENT, "hdkd-student-baseline"):
        version = client.get_model_version_by_alias(name, "champion")
        assert version.version == "1" and "challenger" in version.aliases
    champion = client.get_model_version_by_alias(STUDENT, "champion")
    # Set globally, registry included: `models:/` URIs ignore download_artifacts' own URIs (MLflow would open
    # ./mlflow.db).
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(server.uri)
    mlflow.set_registry_uri(server.uri)
    try:
        downloaded = Path(download_artifacts(f"models:/{STUDENT}@champion", dst_path=str(tmp_path / "dl")))
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    assert (downloaded / "MLmodel").is_file()
    assert champion.tags.get("test_macro_f1")

    # `hdkd predict` loads the champion through the server, from a folder holding no pipeline files at all.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pictures = images(repo, 2)
    said = run(
        [str(VENV_BIN / "hdkd"), "predict", *map(str, pictures), "--json"],
        elsewhere,
        extra_env={"MLFLOW_TRACKING_URI": server.uri, **as_user(READER)},
        timeout=300,
    )
    predicted = predictions(said.stdout)
    assert len(predicted) == 2, said.stdout + said.stderr
    assert f"models:/{STUDENT}@champion" in said.stderr, said.stderr

    # `mlflow models serve` loads it through the server too and answers the same.
    port = free_port()
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{STUDENT}@champion"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    # MLflow 3.17's CLI resolves `models:/` through MLFLOW_REGISTRY_URI (a local sqlite store without it).
    serve_env = {**env(), "MLFLOW_TRACKING_URI": server.uri, "MLFLOW_REGISTRY_URI": server.uri, **as_user(READER)}
    serve_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    log = tmp_path / "serve.log"
    with background(command, log, cwd=elsewhere, env=serve_env) as serving:
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", 120, serving)
        except (TimeoutError, RuntimeError) as error:
            raise AssertionError(f"{error}\n{tail(log)}") from None
        encoded = [base64.b64encode(path.read_bytes()).decode() for path in pictures]
        payload = {"dataframe_split": {"columns": ["image"], "data": [[text] for text in encoded]}}
        answer = post(f"http://127.0.0.1:{port}/invocations", payload)["predictions"]
    assert [row["class"] for row in answer] == [row["class"] for row in predicted]
    for row, expected in zip(answer, predicted, strict=True):
        assert row["probability"] == pytest.approx(expected["probability"], abs=1e-4)

    # Nothing was written to the client's disk outside the server's artifact destination.
    for folder in (repo, elsewhere):
        assert not {"mlruns", "mlartifacts", "mlflow.db"} & {path.name for path in folder.iterdir()}, folder


def http_status(url: str, auth: str | None = None, payload: dict | None = None) -> int:
    """The status of a GET (a POST with `payload`) sent with Basic `auth` ("user:password") or none."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def hdkd(args: list[str], cwd: Path, server: MlflowServer, **extra: str) -> subprocess.CompletedProcess:
    """`hdkd ...` as a separate client of the server, with only the credentials in `extra`."""
    return run(
        [str(VENV_BIN / "hdkd"), *args], cwd, check=False, extra_env={"MLFLOW_TRACKING_URI": server.uri, **extra}
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_anonymous_and_wrong_password_clients_get_401_told_in_one_line(tracked):
    server, repo = tracked.server, tracked.repo
    search = f"{server.uri}/api/2.0/mlflow/experiments/search?max_results=5"
    assert http_status(search) == 401
    assert http_status(search, f"{READER}:not-{SECRET}") == 401
    assert http_status(search, f"{READER}:{PASSWORDS[READER]}") == 200
    assert http_status(f"{server.uri}/health") == 200  # what `check_server` and load balancers probe

    anonymous = one_error_line(hdkd(["promote", STUDENT, "1"], repo, server))
    assert f"MLflow server {server.uri} asks who is calling (401 Unauthorized)" in anonymous
    wrong = one_error_line(hdkd(["promote", STUDENT, "1"], repo, server, **as_user(SERVICE, f"not-{SECRET}")))
    assert f"did not accept the password of user '{SERVICE}' (401 Unauthorized)" in wrong


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_reader_cannot_move_champion_and_a_maintainer_promotes_as_the_server_knows_them(tracked, monkeypatch):
    server, repo = tracked.server, tracked.repo
    client = client_for(server)
    with credentials(SERVICE, PASSWORDS[SERVICE]):  # a second version, as a pipeline run registers one
        first = client.get_model_version(STUDENT, "1")
        logged = first.source.removeprefix("models:/")  # the logged model the version was registered from
        copy = client.create_model_version(STUDENT, first.source, first.run_id, first.tags, model_id=logged)
        second = copy.version

    spoofed = {"USER": "mallory", "LOGNAME": "mallory"}  # what the local environment claims, ignored
    refused = one_error_line(hdkd(["promote", STUDENT, second], repo, server, **as_user(READER), **spoofed))
    assert f"refused to let user '{READER}' move @champion of {STUDENT} (403 Permission denied)" in refused
    assert f"needs EDIT permission on registered model '{STUDENT}'" in refused
    # The MLflow UI's own route (the pencil beside Aliases) meets the same check on the server.
    alias = {"name": STUDENT, "alias": "champion", "version": second}
    assert (
        http_status(f"{server.uri}/ajax-api/2.0/mlflow/registered-models/alias", f"{READER}:{PASSWORDS[READER]}", alias)
        == 403
    )
    with credentials(READER, PASSWORDS[READER]):
        assert client.get_model_version_by_alias(STUDENT, "champion").version == "1"

    promoted = hdkd(["promote", STUDENT, second], repo, server, **as_user(MAINTAINER), **spoofed)
    assert promoted.returncode == 0 and f"{STUDENT} version {second} is now @champion" in promoted.stdout, promoted
    with credentials(READER, PASSWORDS[READER]):
        champion = client.get_model_version_by_alias(STUDENT, "champion")
    assert champion.version == second and champion.tags["promoted_by"] == MAINTAINER
    assert champion.tags["previous_champion"] == "1"


# -- 2. a DVC remote: push here, pull in a second clone --------------------------------------------


@pytest.fixture(scope="module")
def pulled_clone(tracked, tmp_path_factory) -> Path:
    clone = tmp_path_factory.mktemp("clone") / "repo"
    run(["git", "clone", "-q", str(tracked.repo), str(clone)], tracked.repo.parent)
    run(["dvc", "pull"], clone, timeout=300)
    return clone


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dvc_remote_round_trip_gives_a_second_clone_the_same_pipeline_state(tracked, pulled_clone):
    clone = pulled_clone
    assert "storage" in run(["dvc", "remote", "list"], clone).stdout
    for output in ("data/raw", "data/split", "data/balanced", "models/distilled/best.pt", "models/compiled"):
        assert (clone / output).exists(), output
    # A `cache: false` output is neither pushed by DVC nor, if .gitignore hides it, in the clone: it shows here.
    status = run(["dvc", "status"], clone).stdout
    assert run(["dvc", "status", "-q"], clone, check=False).returncode == 0, f"not clean after dvc pull:\n{status}"
    again = run(["dvc", "repro"], clone, timeout=300)
    assert "Data and pipelines are up to date." in again.stdout and "Running stage" not in again.stdout, again.stdout

    # The pulled models predict, with no MLflow at all: the compiled folder and the checkpoint agree.
    pictures = [str(path) for path in images(clone, 3)]
    compiled = predictions(
        run([str(VENV_BIN / "hdkd"), "predict", *pictures, "--json", "--model", "models/compiled"], clone).stdout
    )
    checkpoint = predictions(
        run(
            [str(VENV_BIN / "hdkd"), "predict", *pictures, "--json", "--model", "models/distilled/best.pt"], clone
        ).stdout
    )
    assert len(compiled) == len(checkpoint) == 3
    assert [row["class"] for row in compiled] == [row["class"] for row in checkpoint]
    assert not {"mlruns", "mlartifacts", "mlflow.db"} & {path.name for path in clone.iterdir()}


# -- 3 and 4. a Prefect work pool, a real worker, queued runs one at a time ------------------------


def prefect_api(api: str, path: str, payload: dict | None = None):
    data = json.dumps(payload).encode() if payload is not None else None
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Basic {base64.b64encode(PREFECT_AUTH.encode()).decode()}",
    }
    request = urllib.request.Request(f"{api}{path}", data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_work_pool_worker_runs_queued_deployment_runs_one_at_a_time_each_with_its_parameters(
    tracked, pulled_clone, tmp_path
):
    """`prefect deploy --all` from one checkout; a worker in another (HDKD_REPO) runs two flow runs triggered at
    once with different parameters: both Completed, one after the other, each with its own parameters.
    The server asks for an API auth string: a client without it, or with a wrong one, is refused."""
    port = free_port()
    server_env = {
        **env(),
        **prefect_env(port, tmp_path / "prefect-home", auth_string=PREFECT_AUTH),
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # the worker polls every 2 s (default 10)
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "3",  # a queued run retries its slot (default 30)
    }
    api = server_env["PREFECT_API_URL"]
    prefect = str(VENV_BIN / "prefect")
    with background([prefect, "server", "start"], tmp_path / "server.log", env=server_env) as server:
        try:
            wait_http(f"{api}/health", 180, server)
        except (TimeoutError, RuntimeError) as error:
            raise AssertionError(f"{error}\n{tail(tmp_path / 'server.log')}") from None
        # Outsiders: no auth string, a wrong one (raw API and Prefect's own CLI); /health stays open for probes.
        assert http_status(f"{api}/deployments/name/hdkd/full") == 401
        assert http_status(f"{api}/deployments/name/hdkd/full", f"hdkd:not-{SECRET}") == 401
        assert http_status(f"{api}/health") == 200
        anonymous = {**server_env, "PREFECT_API_AUTH_STRING": ""}
        for outsider in (anonymous, {**server_env, "PREFECT_API_AUTH_STRING": f"hdkd:not-{SECRET}"}):
            refused = run([prefect, "work-pool", "ls"], tracked.repo, check=False, extra_env=outsider)
            assert refused.returncode != 0 and "401" in refused.stdout + refused.stderr, refused
            assert_no_secret(refused.stdout + refused.stderr, "Prefect's refusal")
        run([prefect, "work-pool", "create", "hdkd-pool", "--type", "process"], tracked.repo, extra_env=server_env)
        deployed = run([prefect, "--no-prompt", "deploy", "--all"], tracked.repo, extra_env=server_env, timeout=300)
        assert "hdkd/full" in deployed.stdout, deployed.stdout + deployed.stderr

        worker_env = {
            **server_env,
            "HDKD_REPO": str(pulled_clone),
            "MLFLOW_TRACKING_URI": tracked.server.uri,  # the stages of every checkout track to the one server
            **as_user(SERVICE),  # as the pipeline's service user
        }
        del worker_env["PREFECT_SERVER_API_AUTH_STRING"]  # a worker is a client: PREFECT_API_AUTH_STRING only
        worker_log = tmp_path / "worker.log"
        with background(
            [prefect, "worker", "start", "--pool", "hdkd-pool"],
            worker_log,
            cwd=tmp_path,
            env=worker_env,
        ) as worker:
            watch = ["--watch", "--watch-interval", "1", "--watch-timeout", "700"]
            runs = {}
            for repeats in (4, 5):  # compile and register rerun in each, with its own latency_repeats
                command = [
                    prefect,
                    "deployment",
                    "run",
                    "hdkd/full",
                    "--param",
                    f'overrides={{"compile.latency_repeats": {repeats}}}',
                ]
                runs[repeats] = subprocess.Popen(
                    command + watch, env=server_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
            outputs = {}
            for repeats, process in runs.items():
                try:
                    outputs[repeats], _ = process.communicate(timeout=800)
                except subprocess.TimeoutExpired:
                    process.kill()
                    raise AssertionError(f"run {repeats} did not finish:\n{tail(worker_log)}") from None
            assert worker.poll() is None, tail(worker_log)
        flow_runs = prefect_api(api, "/flow_runs/filter", {"sort": "START_TIME_ASC"})
        flow_logs = json.dumps(prefect_api(api, "/logs/filter", {"limit": 200}))
    for output in outputs.values():
        assert "Flow run finished successfully in 'Completed'." in output, output + tail(worker_log)
        assert_no_secret(output, "`prefect deployment run` output")
    assert_no_secret(worker_log.read_bytes(), "the worker's log")
    assert_no_secret(flow_logs, "the flow runs' logs on the Prefect server")

    # One after the other (the deployment's concurrency_limit: 1), each with its own parameters.
    assert len(flow_runs) == 2 and all(row["state_type"] == "COMPLETED" for row in flow_runs), flow_runs
    first, second = flow_runs
    assert moment(first["end_time"]) <= moment(second["start_time"]), (first, second)
    windows = {row["parameters"]["overrides"]["compile.latency_repeats"]: row for row in flow_runs}
    assert set(windows) == {4, 5}
    # Each run's compile stage, on the MLflow server, ran inside that flow run with that run's setting.
    client = client_for(tracked.server)
    with credentials(READER, PASSWORDS[READER]):
        experiment = client.get_experiment_by_name("hdkd").experiment_id
        compiles = client.search_runs([experiment], "tags.stage = 'compile'", order_by=["attributes.start_time DESC"])
    for compiled in compiles[:2]:
        repeats = int(compiled.data.params["compile.latency_repeats"])
        window = windows[repeats]
        began = datetime.fromtimestamp(compiled.info.start_time / 1000, tz=moment(window["start_time"]).tzinfo)
        assert moment(window["start_time"]) <= began <= moment(window["end_time"]), (repeats, window)
    assert {int(run.data.params["compile.latency_repeats"]) for run in compiles[:2]} == {4, 5}
    assert yaml.safe_load((pulled_clone / "params.yaml").read_text())["compile"]["latency_repeats"] == windows_last(
        flow_runs
    )
    assert run(["dvc", "status", "-q"], pulled_clone, check=False).returncode == 0


def windows_last(flow_runs: list[dict]) -> int:
    """The setting of the flow run that ended last: what params.yaml holds afterwards."""
    return max(flow_runs, key=lambda row: row["end_time"])["parameters"]["overrides"]["compile.latency_repeats"]


# -- 6. no secret leaks ------------------------------------------------------------------------------


def mlflow_texts(server: MlflowServer) -> dict[str, str]:
    """Every name, param, tag and description the MLflow server holds, by where it is."""
    from mlflow.entities import ViewType

    client = client_for(server)
    texts = {}
    with credentials("admin", PASSWORDS["admin"]):
        for experiment in client.search_experiments(view_type=ViewType.ALL):
            texts[f"experiment {experiment.name}"] = json.dumps(experiment.tags)
            for found in client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000):
                data = found.data
                texts[f"run {found.info.run_id}"] = json.dumps([found.info.run_name, data.params, data.tags])
            for model in client.search_logged_models([experiment.experiment_id]):
                texts[f"logged model {model.model_id}"] = json.dumps([model.name, model.params, model.tags])
        for registered in client.search_registered_models():
            texts[f"model {registered.name}"] = json.dumps([registered.description, registered.tags])
            for version in client.search_model_versions(f"name = '{registered.name}'"):
                where = f"model {registered.name} version {version.version}"
                texts[where] = json.dumps([version.description, version.tags, version.source, version.aliases])
    return texts


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_no_credential_in_mlflow_stage_logs_reports_or_dvc_files(tracked, pulled_clone):
    """After the authenticated runs above (and on its own, after the one `dvc repro` as the service user)."""
    texts = mlflow_texts(tracked.server)
    assert any(where.startswith("run ") for where in texts) and f"model {STUDENT}" in texts
    for where, text in texts.items():
        assert_no_secret(text, f"MLflow: {where}")
    assert_no_secret(tracked.repro, "the stage logs of `dvc repro`")
    # Both checkouts whole (params.yaml, dvc.yaml, dvc.lock, .dvc/config, reports/ with the summary and the stage
    # reports, models/), every artifact on the server, and the server's own log.
    files = [path for root in (tracked.repo, pulled_clone, tracked.server.artifacts) for path in root.rglob("*")]
    files = [path for path in files if path.is_file()] + [tracked.server.log]
    assert any(path.name == "summary.md" for path in files) and any(path.name == "dvc.lock" for path in files)
    for path in files:
        assert_no_secret(path.read_bytes(), str(path))


# -- 5. no stale state after a kill --------------------------------------------------------------


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, f"{out[-3000:]}\n{err[-3000:]}"
    return out + err


@contextlib.contextmanager
def live_process() -> Iterator[int]:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        yield sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_only_temporaries_of_gone_processes_are_removed(tmp_path):
    target = tmp_path / "raw"
    with live_process() as alive:
        stale, writing = tmp_path / f".raw.{dead_pid()}.abc_1234.tmp", tmp_path / f".raw.{alive}.abcd1234.tmp"
        other_target = tmp_path / f".raw.5.{dead_pid()}.abcd1234.tmp"  # a temporary of the target `raw.5`
        for folder in (stale, writing, other_target):
            (folder / "images").mkdir(parents=True)
        stale_file = tmp_path / f".raw.{dead_pid()}.zzzz9999.tmp"
        stale_file.write_text("half")
        with atomic_dir(target) as tmp:
            assert tmp.name.startswith(f".raw.{os.getpid()}.")
            assert not stale.exists() and not stale_file.exists()
            assert writing.is_dir() and other_target.is_dir()
            assert remove_stale_temps(target) == []  # its own temporary is kept while it writes
            (tmp / "done").write_text("yes")
        assert (target / "done").read_text() == "yes"
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["raw", writing.name, other_target.name])


def test_stale_runs_are_closed_only_when_their_process_is_gone_from_this_host(tmp_path, capsys):
    import socket

    import mlflow
    from mlflow import MlflowClient

    from hdkd.tracking import HOST_TAG, PID_TAG, close_stale_runs

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("stale", artifact_location=str(tmp_path / "artifacts"))
    host = socket.gethostname()
    with live_process() as alive:
        cases = {
            "gone": ("train_student", dead_pid(), host),
            "alive": ("train_student", alive, host),
            "elsewhere": ("train_student", dead_pid(), "another-host"),
            "other stage": ("distill", dead_pid(), host),
        }
        ids = {
            name: client.create_run(experiment, tags={"stage": stage, PID_TAG: str(pid), HOST_TAG: where}).info.run_id
            for name, (stage, pid, where) in cases.items()
        }
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
        try:
            closed = close_stale_runs(experiment, "train_student")
        finally:
            mlflow.set_tracking_uri(previous)
    assert closed == [ids["gone"]]
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"gone": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING", "other stage": "RUNNING"}
    said = capsys.readouterr().out.splitlines()
    assert said == [
        f"train_student: MLflow run {ids['gone']} was left RUNNING by process {cases['gone'][1]} on {host}, "
        "which is gone; marked it KILLED"
    ]


def training_dir(root: Path) -> Path:
    """What `python -m pipelines.train_student` reads, with its own MLflow store."""
    from tests.helpers import CLASSES, write_split

    for path, n, seed in (
        (root / "data" / "balanced" / "train.npz", 192, 0),
        (root / "data" / "split" / "val.npz", 48, 1),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_split(path, n, CLASSES, seed)
    (root / "data" / "balanced" / "manifest.csv").write_text("path,label\n")
    params = {
        "seed": 3,
        "model": {"preset": "tiny"},
        "data": {"image_size": 32, "num_workers": 0},
        "student": {"epochs": 2, "batch_size": 16, "lr": 0.002, "warmup_epochs": 0},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "stale"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_stage_killed_mid_run_is_marked_killed_by_its_next_run(tmp_path):
    from mlflow import MlflowClient

    root = training_dir(tmp_path)
    stage = [sys.executable, "-m", "pipelines.train_student"]
    victim = start_group(stage, root, **ONE_THREAD)
    last = root / "models" / ".unfinished" / "student" / "last.pt"
    wait_until(last.is_file, "the first epoch's checkpoint", 300, victim)
    kill_group(victim)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("stale").experiment_id
    (left,) = client.search_runs([experiment], "attributes.status = 'RUNNING'")
    assert left.data.tags["stage"] == "train_student" and left.data.tags["hdkd.pid"] == str(victim.pid)

    said = finish(start_group(stage, root, **ONE_THREAD))
    line = f"train_student: MLflow run {left.info.run_id} was left RUNNING by process {victim.pid} on "
    assert [text for text in said.splitlines() if "marked it KILLED" in text] == [
        next(text for text in said.splitlines() if text.startswith(line))
    ], said[-3000:]
    assert client.get_run(left.info.run_id).info.status == "KILLED"
    statuses = sorted(run.info.status for run in client.search_runs([experiment]))
    assert statuses == ["FINISHED", "KILLED"]
    assert not list((root / "models" / "student").glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_temporaries_of_a_killed_write_are_removed_by_the_next_run_of_the_stage(tmp_path):
    def params(images: int) -> None:
        (tmp_path / "params.yaml").write_text(
            yaml.safe_dump({"data": {"synthetic_images": images, "image_size": 32, "min_per_class": 2}})
        )

    def temps() -> list[Path]:
        return sorted((tmp_path / "data").glob(".raw.*.tmp"))

    params(2000)
    ingest = [sys.executable, "-m", "pipelines.ingest"]
    victim = start_group(ingest, tmp_path, **ONE_THREAD)
    wait_until(lambda: any(any((t / "images").glob("*/*.png")) for t in temps()), "ingest to write", 300, victim)
    kill_group(victim)
    (killed,) = temps()
    assert killed.name.startswith(f".raw.{victim.pid}.") and not (tmp_path / "data" / "raw").exists()

    params(120)
    with live_process() as alive:
        busy = tmp_path / "data" / f".raw.{alive}.abcd1234.tmp"  # another process still writing: kept
        busy.mkdir()
        finish(start_group(ingest, tmp_path, **ONE_THREAD))
        assert temps() == [busy]
    rows = (tmp_path / "data" / "raw" / "manifest.csv").read_text().splitlines()
    assert len(rows) - 1 == 120


# -- 7. what the team servers refuse before they start, where they bind, credentials kept out of URIs ---------


def test_team_folder_refuses_default_admin_password_short_and_readable_password_files(tmp_path, monkeypatch):
    from hdkd.servers import TeamError, admin_password, load_team

    team = write_team(tmp_path)
    assert load_team(team)[1] == {name: PASSWORDS[name] for name in (SERVICE, MAINTAINER, READER)}
    assert admin_password(team) == PASSWORDS["admin"]
    admin = team / "passwords" / "admin"
    admin.write_text("password1234\n")
    with pytest.raises(TeamError, match="MLflow's default admin password is still in place; refusing to start"):
        admin_password(team)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "password1234")  # MLflow's own variable wins over the file
    with pytest.raises(TeamError, match=r"^MLFLOW_AUTH_ADMIN_PASSWORD: MLflow's default admin password"):
        admin_password(team)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", PASSWORDS["admin"])
    assert admin_password(team) == PASSWORDS["admin"]

    reader = team / "passwords" / READER
    reader.chmod(0o644)
    with pytest.raises(TeamError, match=f"others may read this password file; run `chmod 600 {reader}`"):
        load_team(team)
    reader.write_text("short")
    reader.chmod(0o600)
    with pytest.raises(TeamError, match=f"the password of '{READER}' is shorter than 12 characters") as refused:
        load_team(team)
    assert "short" not in str(refused.value).replace("shorter", "")
    (team / "team.yaml").write_text(yaml.safe_dump({"service": SERVICE, "readers": [SERVICE]}))
    with pytest.raises(TeamError, match=f"'{SERVICE}' has more than one role"):
        load_team(team)


def test_team_mlflow_command_stops_before_starting_anything_on_the_default_admin_password(tmp_path):
    team = tmp_path / "team"
    team.mkdir()
    write_team(team)
    (team / "passwords" / "admin").write_text("password1234\n")
    refused = run(
        [str(VENV_BIN / "hdkd"), "team-mlflow", str(team), "--artifacts-destination", str(tmp_path / "artifacts")],
        tmp_path,
        check=False,
        extra_env={"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    line = one_error_line(refused)
    assert "MLflow's default admin password is still in place; refusing to start" in line
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "artifacts").exists()


def test_auth_config_is_owner_only_holds_no_admin_password_and_keeps_percent_signs(tmp_path, monkeypatch):
    from mlflow.server.auth.config import read_auth_config

    from hdkd.servers import write_auth_config

    database = "postgresql+psycopg://mlflow:p%40ss@127.0.0.1:5432/mlflow"  # an URL-encoded '@' in the password
    path = write_auth_config(tmp_path, database)
    assert path.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    config = read_auth_config()  # as MLflow's basic-auth app reads it
    assert (config.database_uri, config.default_permission, config.admin_username) == (database, "READ", "admin")
    assert config.admin_password is None


def test_servers_bind_loopback_unless_told_and_warn_when_exposed_without_authentication():
    from hdkd.servers import RISKS, exposure_warning

    home = Path("prefect-home")
    local = prefect_env(4200, home)
    assert local["PREFECT_SERVER_API_HOST"] == "127.0.0.1" and "PREFECT_SERVER_API_AUTH_STRING" not in local
    team = prefect_env(4200, home, "0.0.0.0", auth_string="hdkd:x")
    assert team["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert team["PREFECT_SERVER_API_AUTH_STRING"] == team["PREFECT_API_AUTH_STRING"] == "hdkd:x"

    for server in RISKS:
        assert exposure_warning("127.0.0.1", server) is None and exposure_warning("localhost", server) is None
        warning = exposure_warning("0.0.0.0", server)
        assert warning and "without authentication: anyone who can reach it can" in warning
    assert "start, cancel and delete flow runs" in (exposure_warning("10.0.0.5", "prefect") or "")
    assert "TLS" in (exposure_warning("0.0.0.0", "the team MLflow server", authenticated=True) or "")
    said = subprocess.run(
        [sys.executable, "-m", "hdkd.servers", "0.0.0.0", "mlflow-ui"], capture_output=True, text=True, check=True
    )
    assert said.stderr.startswith("warning: the MLflow UI binds 0.0.0.0 without authentication")


def test_credentials_never_come_from_a_tracking_uri_and_refusals_are_one_line(monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, UNAUTHENTICATED

    from hdkd.config import params_from_dict
    from hdkd.tracking import TrackingError, refusal, tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    params = params_from_dict({"mlflow": {"tracking_uri": f"http://maya:{SECRET}@mlflow.lan:5000"}})
    with pytest.raises(TrackingError, match=r"^params\.yaml: mlflow\.tracking_uri holds a password") as refused:
        tracking_uri(params)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://maya:{SECRET}@mlflow.lan")
    with pytest.raises(TrackingError, match=r"^MLFLOW_TRACKING_URI holds a password") as refused_env:
        tracking_uri(params)
    assert_no_secret(str(refused.value) + str(refused_env.value), "the refusal")

    uri = "http://mlflow.lan:5000"
    anonymous = refusal(MlflowException("401", error_code=UNAUTHENTICATED), uri, "x", "y")
    assert str(anonymous).startswith(f"MLflow server {uri} asks who is calling (401 Unauthorized)")
    forbidden = refusal(MlflowException("403", error_code=PERMISSION_DENIED), uri, "move @champion", "EDIT", "rita")
    assert str(forbidden) == (
        f"MLflow server {uri} refused to let user 'rita' move @champion (403 Permission denied): that needs EDIT; "
        "ask the server's admin for it"
    )
    assert refusal(MlflowException("not found"), uri, "x", "y") is None


def test_a_launcher_stopped_with_sigterm_still_stops_the_servers_it_started():
    """`kill`, systemd or `docker stop` end `hdkd team-mlflow` and `make serve` through their `finally`."""
    script = (
        "import time\nfrom hdkd.servers import stop_on_sigterm\nstop_on_sigterm()\n"
        "try:\n    print('up', flush=True)\n    time.sleep(120)\nfinally:\n    print('servers stopped', flush=True)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert launcher.stdout is not None and launcher.stdout.readline() == "up\n"
    launcher.terminate()
    out, _ = launcher.communicate(timeout=30)
    assert out == "servers stopped\n" and launcher.returncode == 128 + signal.SIGTERM


def test_team_mlflow_refuses_a_port_another_server_holds(tmp_path):
    team = write_team(tmp_path)
    with socket.socket() as other:
        other.bind((LOOPBACK, 0))
        other.listen()
        port = other.getsockname()[1]
        taken = f"127.0.0.1:{port} is taken by another server; stop it or choose --port"
        store, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts")
        with pytest.raises(TeamError, match=taken), team_mlflow(team, store, artifacts, LOOPBACK, port):
            pass
    assert not (tmp_path / "mlflow.db").exists()
