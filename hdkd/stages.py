"""The stages of `dvc.yaml` by name: `python -m hdkd.stages <stage>` (what `pipelines/<stage>.py` runs,
and what a training stage relaunches under torchrun). Bad input ends with one clear line, not a traceback.

Imports are local to each stage, so a stage loads only the libraries it uses.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from hdkd.config import load_params
from hdkd.errors import HDKDError
from hdkd.layout import REPO


def _ingest() -> Any:
    from hdkd.data.ingest import ingest

    return ingest(load_params(), REPO.raw)


def _validate() -> Any:
    from hdkd.data.validate import validate

    return validate(load_params(), REPO.raw, REPO.reports)


def _split() -> Any:
    from hdkd.data.split import split

    return split(load_params(), REPO.raw, REPO.split)


def _balance() -> Any:
    from hdkd.data.balance import balance

    return balance(load_params(), REPO.split, REPO.balanced)


def _training(kind: str) -> Callable[[], Any]:
    def run() -> Any:
        from hdkd.training.train import train_stage
        from hdkd.tune.best import apply_best_params

        params = load_params()
        return train_stage(apply_best_params(params, kind) if kind != "teacher" else params, kind)

    return run


def _tune() -> Any:
    params = load_params()
    if not params.tune.enabled:  # nothing to tune: no torch, MLflow or study storage to start
        from hdkd.tune.report import write_disabled

        return write_disabled(REPO)
    from hdkd.tune.stage import tune_stage

    return tune_stage(params)


def _evaluate() -> Any:
    from hdkd.evaluation.evaluate import evaluate_stage

    return evaluate_stage(load_params())


def _compile() -> Any:
    from hdkd.deploy.compile import compile_stage

    return compile_stage(load_params())


def _register() -> Any:
    from hdkd.registry.register import register

    return register(load_params())


STAGES: dict[str, Callable[[], Any]] = {
    "ingest": _ingest,
    "validate": _validate,
    "split": _split,
    "balance": _balance,
    "train_teacher": _training("teacher"),
    "train_student": _training("student"),
    "tune": _tune,
    "distill": _training("distilled"),
    "evaluate": _evaluate,
    "compile": _compile,
    "register": _register,
}


def run(stage: str) -> None:
    """Run one stage; an `HDKDError` (bad input, named) exits with status 1 and its message."""
    if stage not in STAGES:
        print(f"error: unknown stage {stage!r}; the stages are {', '.join(STAGES)}", file=sys.stderr)
        sys.exit(2)
    try:
        STAGES[stage]()
    except HDKDError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) == 2 else "")
