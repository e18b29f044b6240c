"""Prefect flow `hdkd`: the DVC stage graph as Prefect tasks, one task per stage.

Each task runs its DVC stage (`dvc repro --single-item <stage>`), not a copy of its code: DVC
skips a stage whose inputs did not change, keeps `dvc.lock` true, and caches the outputs, so
after a flow run `dvc status` is clean and `dvc repro` has nothing left to do. Per-run
parameters are validated by the typed config and written into params.yaml first, as
`dvc exp run -S` does, so the lock file records exactly what ran.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import deque
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from hdkd.config import load_params, save_overrides
from hdkd.evaluation.report import run_markdown
from hdkd.kinds import KINDS
from hdkd.layout import REPO
from hdkd.servers import tool_env

# Stages that write to MLflow (a service that may blip) retry with back-off; the others fail fast.
TRACKED_STAGES = {"train_teacher", "train_student", "tune", "distill", "evaluate", "compile", "register"}


class StageFailed(RuntimeError):
    """A DVC stage ended with a non-zero status; the message carries the end of its output."""


def stage_names(dvc_file: Path = Path("dvc.yaml")) -> list[str]:
    """The stages in the order dvc.yaml lists them (which is a valid topological order)."""
    return list(yaml.safe_load(dvc_file.read_text())["stages"])


def run_dvc_stage(stage: str) -> None:
    logger = get_run_logger()
    tail: deque[str] = deque(maxlen=40)
    env = tool_env()
    with subprocess.Popen(
        [shutil.which("dvc", path=env["PATH"]) or "dvc", "repro", "--single-item", stage],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                logger.info("%s | %s", stage, line)
    if process.returncode != 0:
        lines = list(tail)
        # The stage's own `error:` message and what follows it (e.g. GX's failed expectations).
        first = next((i for i, line in enumerate(lines) if line.startswith("error:")), max(len(lines) - 10, 0))
        raise StageFailed(f"stage {stage!r} failed: " + "\n".join(lines[first:]))


def _stage_task(stage: str) -> Any:
    retries = 2 if stage in TRACKED_STAGES else 0
    return task(name=stage, retries=retries, retry_delay_seconds=[5, 30])(run_dvc_stage)


def _logged_runs() -> dict[str, str]:
    runs = {}
    for kind in KINDS:
        logged = REPO.logged_model(kind)
        if logged.is_file():
            runs[kind] = json.loads(logged.read_text())["run_id"]
    return runs


def _ablation(seeds: int, configs: list[str] | None) -> list[str]:
    from hdkd.evaluation.ablation import DEFAULT_CONFIGS, ablate, markdown

    summary = ablate(load_params(), configs or DEFAULT_CONFIGS, seeds, log=get_run_logger().info)
    create_markdown_artifact(key="hdkd-ablation", markdown=markdown(summary), description="HDKD ablation")
    return [f"ablation {summary['batch']}"]


@flow(name="hdkd", log_prints=True)
def hdkd(
    data_source: str | None = None,
    data_path: str | None = None,
    preset: str | None = None,
    epochs: int | None = None,
    tune_trials: int | None = None,
    compile_targets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    ablate: bool = False,
    ablation_seeds: int = 3,
    ablation_configs: list[str] | None = None,
) -> list[str]:
    """Run the whole chain; arguments override params.yaml for this run (and are recorded there).

    With `ablate` (the deployment `hdkd/ablation`), run `hdkd ablate` instead: seeds x configurations as
    queued DVC experiments, reported in reports/ablation.md and as a markdown artifact."""
    chosen = dict(overrides or {})
    named = {
        "data.source": data_source,
        "data.path": data_path,
        "model.preset": preset,
        "tune.n_trials": tune_trials,
        "compile.targets": compile_targets,
    }
    chosen.update({key: value for key, value in named.items() if value is not None})
    if epochs is not None:
        chosen.update({f"{section}.epochs": epochs for section in ("teacher", "student", "distill")})
    if chosen:
        save_overrides("params.yaml", chosen)
        get_run_logger().info("params.yaml overrides for this run: %s", chosen)
    if ablate:
        return _ablation(ablation_seeds, ablation_configs)
    stages = stage_names()
    for stage in stages:
        _stage_task(stage)(stage)
    create_markdown_artifact(
        key="hdkd-summary", markdown=run_markdown(REPO.reports, _logged_runs()), description="HDKD comparison"
    )
    return stages
