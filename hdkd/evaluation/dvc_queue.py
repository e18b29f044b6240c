"""DVC's experiment queue from Python, for `hdkd ablate`: run `dvc`, start its queue workers, wait for them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hdkd.errors import HDKDError
from hdkd.servers import tool_env


class QueueError(HDKDError, RuntimeError):
    """DVC refused a command, or its queue workers stopped with experiments pending."""


def dvc(
    args: Sequence[str], root: Path, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = tool_env(**(env or {}))  # DVC's queue workers start `dvc` and the stages `python` from PATH
    dvc = shutil.which("dvc", path=environment["PATH"]) or "dvc"
    # Output goes through files, not pipes: the workers `dvc queue start` leaves running inherit its stdout and
    # stderr, and reading pipes would wait for them to exit, that is until the whole queue had run.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run([dvc, *args], cwd=root, stdout=out, stderr=err, check=False, env=environment).returncode
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess([dvc, *args], code, out.read(), err.read())
    if check and result.returncode != 0:
        raise QueueError(f"dvc {' '.join(args)} failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    return result


def flag(key: str, value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | bool) or value is None else str(value)
    return f"{key}={text.lower() if isinstance(value, bool) else text}"


def stage_lock_file(root: Path, log: Callable[[str], None]) -> None:
    """A queued experiment starts from git's view of the workspace: an untracked or changed dvc.lock would be
    left behind and the experiment would retrain the teacher. Staging it (not committing) carries it along."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "dvc.lock"], cwd=root, capture_output=True, text=True, check=False
    )
    if status.stdout.strip():
        subprocess.run(["git", "add", "dvc.lock"], cwd=root, check=True)
        log("ablation: staged dvc.lock in git (not committed), so the experiments start from the trained teacher")


def batch_tasks(status: str, batch: str) -> list[str]:
    """The task lines of `dvc queue status` whose experiment belongs to `batch` (named `<batch>-...`)."""
    return [line for line in status.splitlines()[1:] if f" {batch}-" in line and not line.startswith("Worker")]


def is_pending(task: str) -> bool:
    """Whether a task line of `dvc queue status` is still queued or running."""
    return any(word in task for word in ("Queued", "Running"))


def progress(tasks: Sequence[str]) -> str:
    """How many experiments of a batch's task lines are done. An experiment can be listed twice while DVC moves
    it from running to done, so experiments are counted by name, and one is done when no line has it pending."""
    names = {line.split()[1] for line in tasks}
    pending = {line.split()[1] for line in tasks if is_pending(line)}
    return f"ablation: {len(names - pending)} of {len(names)} experiment(s) done"


def run_queue(root: Path, jobs: int, log: Callable[[str], None], batch: str, poll_seconds: float = 5.0) -> list[str]:
    """Start `jobs` DVC queue workers and wait until no task of `batch` (a prefix of its experiment names) is
    queued or running; returns its failed task lines. DVC's queue also lists the tasks of earlier batches."""
    if jobs < 1:
        raise QueueError("--jobs must be at least 1")
    env: dict[str, str] = {}
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        # The workers' stages share the cores with the other jobs' (`share_cores` alone would give each
        # the cores its own DataLoader workers leave free, as if it ran alone).
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // jobs))
    dvc(["queue", "start", "--jobs", str(jobs)], root, env=env)
    started = time.monotonic()
    shown = ""
    idle_polls = 0
    while True:
        status = dvc(["queue", "status"], root).stdout
        lines = [line for line in status.splitlines()[1:] if line.strip()]
        tasks = batch_tasks(status, batch)
        pending = [line for line in tasks if is_pending(line)]
        summary = progress(tasks)
        if summary != shown:
            log(summary)
            shown = summary
        if not pending:
            return [line for line in tasks if "Failed" in line]
        active = next((int(m[1]) for line in lines if (m := re.match(r"Worker status: (\d+) active", line))), 0)
        if active < jobs and any("Queued" in line for line in tasks) and time.monotonic() - started > 60:
            # A DVC queue worker can stop with tasks still queued (treeverse/dvc#10562): start the missing ones
            # (`queue start` starts only workers that are not running; a minute apart, so a worker still
            # starting up is not started twice).
            dvc(["queue", "start", "--jobs", str(jobs)], root, env=env)
            started = time.monotonic()
        # DVC's workers can die at start (e.g. unable to spawn `dvc`) and leave the queue waiting forever: give
        # up when two restarts brought none up.
        idle_polls = idle_polls + 1 if active == 0 else 0
        if idle_polls * poll_seconds >= 150:
            logs = root / ".dvc" / "tmp" / "exps" / "celery"
            raise QueueError(
                f"DVC's queue workers stopped with {len(pending)} experiment(s) pending; see the worker logs in "
                f"{logs} and `dvc queue status`, then `dvc queue start`"
            )
        time.sleep(poll_seconds)
