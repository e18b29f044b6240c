"""Atomic writes: a stage killed half-way leaves the previous output or nothing, never a torn one.

The temporary file or folder sits beside its target as `.<name>.<pid>.<random>.tmp`, named after the
process writing it. A write killed half-way (SIGKILL, OOM, power) leaves that temporary behind; the next
atomic write to the same target removes it once its process is gone from this machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a zombie counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def remove_stale_temps(target: str | Path) -> list[Path]:
    """Delete the temporaries of interrupted atomic writes to `target` whose writing process is gone.

    Only `.<name>.<pid>.<random>.tmp` siblings of `target` are considered, and only those whose pid is not a
    live process here: a write in progress (this process or another) keeps its temporary.
    """
    target = Path(target)
    # tempfile's random part: 8 characters of [a-z0-9_] (so `.a.5.<pid>...` of a target `a.5` never matches `a`)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[a-z0-9_]{{8}}\.tmp")
    removed: list[Path] = []
    try:
        siblings = list(target.parent.iterdir())
    except FileNotFoundError:
        return removed
    for sibling in siblings:
        match = pattern.fullmatch(sibling.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed.append(sibling)
    return removed


def _umask_mode(mode: int) -> int:
    """`mode` less the process's umask: the permissions `open` or `mkdir` would have given."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `target`; on success rename it over `target`, with the permissions
    a plain `open` would have given (mkstemp's are owner-only: a teammate could not read the reports)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.is_file():
            tmp.chmod(_umask_mode(0o666))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it replaces `target` whole (with the
    permissions of a plain `mkdir`, not mkdtemp's owner-only ones)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(_umask_mode(0o777))
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, payload: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_figure(figure: Any, path: str | Path, dpi: int = 100) -> None:
    """A matplotlib figure to `path` (format from its suffix), atomically like every other output."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip("."), dpi=dpi)
