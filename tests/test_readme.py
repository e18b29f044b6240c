"""The README is a contract: its journey runs, command for command and in order, in a fresh copy of the
repository, in a shell like a new user's (the venv not on PATH until the README activates it).

The journey is the README's bash blocks marked `<!-- journey: NAME -->`; a block marked
`<!-- journey: NAME, background until URL -->` is a server: it runs in the background until URL answers,
through the next block, and is then stopped. The params are the tests' tiny ones (tests/repo.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from hdkd.servers import stop_group, wait_for
from tests.helpers import REPO
from tests.repo import VENV_BIN, env, make_repo

JOURNEY = ("run", "reports", "mlflow-ui", "experiment", "predict", "serve", "request", "dashboard")
MARKED = re.compile(
    r"^ *<!-- journey: (?P<name>[\w-]+)(?:, background until (?P<url>\S+))? -->\n"
    r"(?P<indent> *)```bash\n(?P<code>.*?)^(?P=indent)```",
    re.S | re.M,
)
WIDEST = 120  # columns: the README's tables must fit a terminal


@dataclass(frozen=True)
class Block:
    name: str
    code: str
    url: str | None


def journey(readme: Path = REPO / "README.md") -> list[Block]:
    return [
        Block(match["name"], textwrap.dedent(match["code"]), match["url"])
        for match in MARKED.finditer(readme.read_text())
    ]


def test_the_readme_marks_its_journey_in_order():
    assert [block.name for block in journey()] == list(JOURNEY)
    assert all(block.code.strip() for block in journey())


def new_shell_env() -> dict[str, str]:
    """A new shell's environment: the project's venv is not on PATH and not active."""
    values = env()
    values["PATH"] = os.pathsep.join(p for p in values["PATH"].split(os.pathsep) if Path(p) != VENV_BIN)
    values.pop("VIRTUAL_ENV", None)
    return values


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.load(answer)


def check(block: Block, out: str) -> None:
    """What each step must show, beyond exiting 0."""
    if block.name == "run":
        assert "registered: models:/hdkd-student/1" in out
    elif block.name == "reports":
        table = [line for line in out.splitlines() if line.startswith(("Path ", "reports/metrics/"))]
        assert len(table) == 5, out  # a header and a row for each of the 4 metrics files
        assert max(map(len, table)) <= WIDEST, out
    elif block.name == "mlflow-ui":
        found = get_json("http://127.0.0.1:5000/api/2.0/mlflow/experiments/get-by-name?experiment_name=hdkd")
        assert found["experiment"]["name"] == "hdkd"
    elif block.name == "experiment":
        table = [line for line in out.splitlines() if line.startswith("|")]
        assert "distilled.json:macro_f1" in table[0] and "hdkd_gain" in table[0]
        assert len(table) >= 4, out  # header, rule, workspace and at least one experiment or commit
        assert max(map(len, table)) <= WIDEST, out
        assert "champion" in out
    elif block.name == "predict":
        answers = [json.loads(line) for line in out.splitlines()]
        assert answers and all("class" in answer for answer in answers)
    elif block.name == "request":
        assert json.loads(out)["predictions"][0]["class"]
    elif block.name == "dashboard":
        studies = get_json("http://127.0.0.1:8080/api/studies")["study_summaries"]
        assert len(studies) == 2, studies  # both students, tuned alike


@pytest.mark.slow
def test_the_readme_journey_works_as_written(tmp_path):
    repo = make_repo(tmp_path / "clone")
    (repo / ".venv").symlink_to(VENV_BIN.parent)  # the environment `make setup` installed
    os.utime(repo / "pyproject.toml", (0, 0))  # ... for this very pyproject.toml: `make run` does not reinstall
    shell = new_shell_env()
    activate = ""
    server: tuple[Block, subprocess.Popen] | None = None
    for block in journey():
        script = f"set -euo pipefail\n{activate}{block.code}"
        if block.url:
            process = subprocess.Popen(
                ["bash", "-c", script], cwd=repo, env=shell, start_new_session=True, stdout=subprocess.DEVNULL
            )
            wait_for(block.url, timeout=180, process=process)
            check(block, "")
            server = (block, process)
            continue
        done = subprocess.run(["bash", "-c", script], cwd=repo, env=shell, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"README step {block.name!r} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        check(block, done.stdout)
        if "source .venv/bin/activate" in block.code:
            activate = "source .venv/bin/activate\n"  # the rest of the journey runs in the activated shell
        if server is not None:
            stop_group(server[1])
            server = None
    if server is not None:
        stop_group(server[1])


def test_the_venvs_own_tools_start_the_venvs_python_without_activation():
    """`make setup`'s path hook: what `.venv/bin/dvc` or `.venv/bin/mlflow` start finds the venv's tools first."""
    found = subprocess.run(
        [str(VENV_BIN / "python"), "-c", "import shutil; print(shutil.which('python'), shutil.which('uvicorn'))"],
        env=new_shell_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found == [str(VENV_BIN / "python"), str(VENV_BIN / "uvicorn")]


def test_a_stage_run_by_another_interpreter_stops_with_one_line(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    repo = make_repo(tmp_path / "clone")
    (repo / ".venv").symlink_to(VENV_BIN.parent)  # the checkout has its venv, which is not active
    before = sorted(repo.iterdir())
    done = subprocess.run(
        [str(bare / "bin" / "python"), "-m", "pipelines.ingest"], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "lacks the project's packages (torch, mlflow" in line
    assert "source .venv/bin/activate" in line
    assert sorted(repo.iterdir()) == before  # nothing written (no data/, no mlflow.db)
