"""What the training loop tells the outside world (tracking, pruning), without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

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
