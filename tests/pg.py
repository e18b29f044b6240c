"""A throw-away PostgreSQL server for tests: `initdb` + `pg_ctl` in a temp dir, on 127.0.0.1.

PostgreSQL refuses to run as root, so under root (CI) every server command runs as the
`postgres` user that Debian's package creates, in a folder that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.helpers import free_port

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: `make test` installs Debian's `postgresql` package"
)


def _bindir() -> Path:
    if found := shutil.which("initdb"):
        return Path(found).resolve().parent
    # Debian keeps the server binaries off PATH, one folder per major version.
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        pytest.fail(f"{INSTALL_HINT} (apt-get install postgresql)")
    return Path(candidates[-1]).parent


@contextlib.contextmanager
def postgres_server(database: str = "optuna") -> Iterator[str]:
    """Start a server, create `database`, yield its SQLAlchemy URL; stop and delete it at the end."""
    bindir = _bindir()
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    root = Path(tempfile.mkdtemp(prefix="hdkd-pg-"))
    if as_root:
        shutil.chown(root, "postgres", "postgres")
    data, log, port = root / "data", root / "server.log", free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            pytest.fail(
                f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
            )

    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "hdkd", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start")
        started = True
        with psycopg.connect(f"host=127.0.0.1 port={port} user=hdkd dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        yield f"postgresql+psycopg://hdkd@127.0.0.1:{port}/{database}"
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(root, ignore_errors=True)
