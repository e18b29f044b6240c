"""What the training loop tells the outside world (tracking, pruning), without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow

if TYPE_CHECKING:
    from torch import nn


class Callback:
    """Hooks for tracking, pruning or early stopping; the loop never needs to know which."""

    def on_resume(self, history: list[dict[str, float]]) -> None:
        """Called once when a run continues from `last.pt`, with the metrics of the epochs it restored."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Called after validation; raising here stops the run (e.g. `optuna.TrialPruned`)."""

    def on_fit_end(self, result: FitResult) -> None:
        """Called once with the finished result."""


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    best_path: Path
    last_path: Path
    net: nn.Module  # the trained network with its final-epoch weights (best ones are in best_path)
    history: list[dict[str, float]] = field(default_factory=list)


class MlflowCallback(Callback):
    """Per-epoch metrics into the active run (optionally prefixed, e.g. for nested trial runs)."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id

    def on_resume(self, history: list[dict[str, float]]) -> None:
        # A resumed stage's run holds the whole learning curve, not only the epochs it trained.
        for epoch, metrics in enumerate(history):
            self.on_epoch_end(epoch, metrics)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics, step=epoch, run_id=self.run_id)

    def on_fit_end(self, result: FitResult) -> None:
        # 1-based like the epochs in logs and DVC metrics; the best score under its own name, since
        # `val_macro_f1` is a per-epoch series whose last value is the last epoch's.
        mlflow.log_metrics(
            {"best_epoch": result.best_epoch + 1, "best_val_macro_f1": result.best_score}, run_id=self.run_id
        )
