"""Servers and tools started as child processes (Prefect in `make serve`, the team's authenticated MLflow
server, `mlflow models serve` in benchmarks and tests, DVC from flows and `hdkd ablate`): their environment,
wait until one answers, stop one with everything it started, and a warning when one is exposed.

`python -m hdkd.servers HOST SERVER` prints that warning for the `make` targets of third-party servers
(`make mlflow-ui`, `make optuna-dashboard`, `make serve-model`).
"""

from __future__ import annotations

import configparser
import contextlib
import ipaddress
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from hdkd.errors import HDKDError

LOOPBACK = "127.0.0.1"
# What anyone who reaches a server that asks no one who is calling can do with it, and what to do instead.
RISKS = {
    "prefect": (
        "the Prefect server",
        "start, cancel and delete flow runs and read their logs; set PREFECT_SERVER_API_AUTH_STRING "
        "(clients: PREFECT_API_AUTH_STRING)",
    ),
    "mlflow-ui": (
        "the MLflow UI",
        "read, change and delete every run and registered model and move @champion, which serving loads; "
        "share runs through `hdkd team-mlflow` instead",
    ),
    "optuna-dashboard": ("optuna-dashboard", "read, change and delete the studies and their trials"),
    "model-server": (
        "mlflow models serve",
        "send it any number of images (no authentication, no rate limit); put an authenticating proxy in front",
    ),
}


def tool_env(**extra: str) -> dict[str, str]:
    """This interpreter's bin folder first on PATH, so `dvc`, the processes DVC spawns (its queue workers) and
    the stages' `python` are the project's even when the caller ran `.venv/bin/hdkd` without activating."""
    bin_dir = os.path.dirname(sys.executable)
    return {
        **os.environ,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1"),
        **extra,
    }


def wait_for(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Until `url` answers; fails early, naming the URL, when `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (a local http URL)
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop_group(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM to the process group started with `start_new_session=True` (a CLI and the workers it
    started), SIGKILL if it is still there after `timeout` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def stop_on_sigterm() -> None:
    """SIGTERM (`kill`, systemd, `docker stop`) ends a launcher as Ctrl-C does: through its `finally`, which
    stops the servers it started (they run in their own process groups and would outlive it)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


# -- binding ---------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def exposure_warning(host: str, server: str, authenticated: bool = False) -> str | None:
    """One line when `server` (a key of RISKS, or a name when `authenticated`) binds more than loopback."""
    if is_loopback(host):
        return None
    if authenticated:
        return (
            f"warning: {server} binds {host}: its basic authentication travels as plain HTTP, so anyone on the "
            "network path can read the passwords; put a TLS proxy (HTTPS) in front of it"
        )
    name, risk = RISKS[server]
    return (
        f"warning: {name} binds {host} without authentication: anyone who can reach it can {risk}. "
        f"Bind {LOOPBACK} unless that is what you want."
    )


def warn_exposed(host: str, server: str, authenticated: bool = False) -> None:
    if warning := exposure_warning(host, server, authenticated):
        print(warning, file=sys.stderr, flush=True)


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host` (a wildcard address: loopback)."""
    return LOOPBACK if host in ("0.0.0.0", "::", "") else host  # noqa: S104 (recognised, not bound)


# -- the team's MLflow server: MLflow's basic-auth app, users and roles from a team folder -------------

ADMIN = "admin"
# The admin password MLflow's basic_auth.ini shipped before 3.x (advisory GHSA-gq3w-7jj3-x7gr).
MLFLOW_DEFAULT_ADMIN_PASSWORD = "password1234"  # noqa: S105 (the value refused)
MIN_PASSWORD = 12  # MLflow's own password policy
# Each role's permission on *every* experiment / registered model ("*"). Anything not granted falls back to
# the server's default_permission, READ: a reader needs no grant, only an account.
ROLE_GRANTS: dict[str, dict[str, str]] = {
    "service": {"experiment": "EDIT", "registered_model": "EDIT"},
    "maintainer": {"registered_model": "MANAGE"},
    "reader": {},
}
GRANTED_TYPES = ("experiment", "registered_model")


class TeamError(HDKDError, ValueError):
    """A team folder, password or admin setting the authenticated MLflow server cannot start with."""


class Team(BaseModel):
    """team.yaml: who has which role. No passwords: those are files in passwords/, one per user."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    service: str
    maintainers: list[str] = []
    readers: list[str] = []

    def roles(self) -> dict[str, str]:
        pairs = [(self.service, "service")]
        pairs += [(name, "maintainer") for name in self.maintainers]
        pairs += [(name, "reader") for name in self.readers]
        return dict(pairs)


def read_secret(path: Path, who: str) -> str:
    """A password file: readable by its owner only, 12 characters at least; the value is never shown."""
    if not path.is_file():
        raise TeamError(f"{path}: no password file for {who!r}; write one ({MIN_PASSWORD}+ characters, chmod 600)")
    if path.stat().st_mode & 0o077:
        raise TeamError(f"{path}: others may read this password file; run `chmod 600 {path}`")
    return check_password(path.read_text().strip(), str(path), who)


def check_password(password: str, where: str, who: str) -> str:
    if who == ADMIN and password == MLFLOW_DEFAULT_ADMIN_PASSWORD:
        raise TeamError(
            f"{where}: MLflow's default admin password is still in place; refusing to start, choose another"
        )
    if len(password) < MIN_PASSWORD:
        raise TeamError(
            f"{where}: the password of {who!r} is shorter than {MIN_PASSWORD} characters (MLflow's minimum)"
        )
    return password


def admin_password(folder: Path) -> str:
    """MLflow's own MLFLOW_AUTH_ADMIN_PASSWORD when set, else the file passwords/admin."""
    if (value := os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD")) is not None:
        return check_password(value.strip(), "MLFLOW_AUTH_ADMIN_PASSWORD", ADMIN)
    return read_secret(folder / "passwords" / ADMIN, ADMIN)


def load_team(folder: Path) -> tuple[Team, dict[str, str]]:
    """team.yaml and every user's password, all checked before anything starts."""
    path = folder / "team.yaml"
    if not path.is_file():
        raise TeamError(f"{path}: not found; it names the service user, the maintainers and the readers")
    try:
        team = Team.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as error:
        first = error.errors()[0] if isinstance(error, ValidationError) else None
        reason = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else "not valid YAML"
        raise TeamError(f"{path}: {reason} (keys: service, maintainers, readers)") from None
    names = [team.service, *team.maintainers, *team.readers]
    for name in names:
        if name == ADMIN or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise TeamError(f"{path}: {name!r} cannot be a user name (letters, digits, . _ -; not {ADMIN!r})")
        if names.count(name) > 1:
            raise TeamError(f"{path}: {name!r} has more than one role")
    return team, {name: read_secret(folder / "passwords" / name, name) for name in names}


def write_auth_config(folder: Path, database_uri: str) -> Path:
    """The basic-auth app's ini (MLFLOW_AUTH_CONFIG_PATH): users in the tracking database, READ for everyone
    by default. Owner-only: the database URI may hold the database's password. No admin password in it."""
    config = configparser.ConfigParser()
    # MLflow reads the file with interpolation: a URL-encoded `%` in the URI must be doubled.
    config["mlflow"] = {
        "default_permission": "READ",
        "database_uri": database_uri.replace("%", "%%"),
        "admin_username": ADMIN,
    }
    path = folder / "basic_auth.ini"
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        config.write(handle)
    return path


@contextlib.contextmanager
def credentials(username: str, password: str) -> Iterator[None]:
    """MLflow's clients read MLFLOW_TRACKING_USERNAME/PASSWORD at each request: set them for a block."""
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(zip(names, (username, password), strict=True))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def provision(uri: str, team: Team, passwords: dict[str, str], admin: str) -> list[str]:
    """As admin, through MLflow's AuthServiceClient: each user exists with the password of its file and
    holds exactly its role's grants (a role changed in team.yaml replaces the old grants). One line each."""
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    client = AuthServiceClient(uri)
    said = []
    with credentials(ADMIN, admin):
        try:
            for name, role in team.roles().items():
                try:
                    client.create_user(name, passwords[name])
                except MlflowException as error:
                    if error.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    client.update_user_password(name, passwords[name])
                for resource_type in GRANTED_TYPES:
                    with contextlib.suppress(MlflowException):  # nothing granted yet
                        client.revoke_user_permission(name, resource_type, "*")
                    if permission := ROLE_GRANTS[role].get(resource_type):
                        client.grant_user_permission(name, resource_type, "*", permission)
                grants = ", ".join(f"{p} on every {t}" for t, p in ROLE_GRANTS[role].items()) or "READ (the default)"
                said.append(f"{name}: {role} ({grants})")
        except MlflowException as error:
            if error.get_http_status_code() == 401:
                raise TeamError(
                    f"{uri} did not accept the admin password: the admin user already exists in the user database "
                    "with another one (MLFLOW_AUTH_ADMIN_PASSWORD or passwords/admin only sets it the first time)"
                ) from None
            first_line = error.message.splitlines()[0]
            raise TeamError(
                f"{uri} could not create the team's users ({first_line}); see the server's output"
            ) from None
    return said


def check_port_free(host: str, port: int) -> None:
    """A server already answering there would take the requests (and the users) meant for this one."""
    with socket.socket() as probe:
        probe.settimeout(2)
        if probe.connect_ex((client_host(host), port)) == 0:
            raise TeamError(f"{client_host(host)}:{port} is taken by another server; stop it or choose --port")


@dataclass(frozen=True)
class Running:
    uri: str
    process: subprocess.Popen
    users: list[str]


@contextlib.contextmanager
def team_mlflow(
    folder: Path,
    backend_store_uri: str,
    artifacts_destination: str,
    host: str = LOOPBACK,
    port: int = 5000,
    allowed_hosts: str | None = None,
    output: IO[bytes] | None = None,
) -> Iterator[Running]:
    """`mlflow server --app-name basic-auth` on `backend_store_uri` (its users too), artifacts through its proxy,
    with the users and grants of `folder`; stopped at the end. Refuses to start on MLflow's default admin
    password, a missing or short password, or a password file others may read."""
    team, passwords = load_team(folder)
    admin = admin_password(folder)
    check_port_free(host, port)
    warn_exposed(host, "the team MLflow server", authenticated=True)
    with tempfile.TemporaryDirectory(prefix="hdkd-mlflow-auth-") as private:
        env = tool_env(
            MLFLOW_AUTH_CONFIG_PATH=str(write_auth_config(Path(private), backend_store_uri)),
            MLFLOW_AUTH_ADMIN_PASSWORD=admin,
            # Environment, not arguments: `ps` shows arguments to every user of the machine.
            MLFLOW_BACKEND_STORE_URI=backend_store_uri,
            MLFLOW_ARTIFACTS_DESTINATION=artifacts_destination,
            MLFLOW_FLASK_SERVER_SECRET_KEY=os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32),
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        )
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
            env.pop(name, None)
        command = [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth"]
        command += ["-h", host, "-p", str(port), *(["--allowed-hosts", allowed_hosts] if allowed_hosts else [])]
        process = subprocess.Popen(command, env=env, stdout=output, stderr=output, start_new_session=True)
        try:
            uri = f"http://{client_host(host)}:{port}"
            wait_for(f"{uri}/health", 180, process)
            yield Running(uri, process, provision(uri, team, passwords, admin))
        finally:
            stop_group(process)


if __name__ == "__main__":
    _, host, server = sys.argv
    warn_exposed(host, server)
