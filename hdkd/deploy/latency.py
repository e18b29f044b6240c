"""The compile stage's latency table: every runner at batch 1 and 16, timed in alternating blocks."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from hdkd.deploy.runtime import Runner, preprocess
from hdkd.evaluation.timing import measure_latency

LATENCY_BATCHES = (1, 16)


def latency_batch(images: np.ndarray, size: int, image_size: int) -> np.ndarray:
    """`size` preprocessed real images (repeated when the split is smaller)."""
    reps = -(-size // len(images))
    return np.ascontiguousarray(preprocess(np.concatenate([images[:size]] * reps)[:size], image_size))


def _timed_call(runner: Runner, batch: np.ndarray) -> Callable[[], object]:
    def call() -> object:
        out = runner.run(batch)
        if runner.device == "cuda":
            torch.cuda.synchronize()
        return out

    return call


def latency_table(
    runners: Mapping[str, Runner], images: np.ndarray, image_size: int, max_batch: int, repeats: int
) -> dict[str, dict[str, float]]:
    """`{runner: {"b1_median_ms", "b1_p90_ms", ..., "speedup_b1", ...}}`; speed-ups against eager on the same device."""
    latency: dict[str, dict[str, float]] = {name: {} for name in runners}
    for size in sorted({min(size, max_batch) for size in LATENCY_BATCHES}):
        batch = latency_batch(images, size, image_size)
        calls = {name: _timed_call(runner, batch) for name, runner in runners.items()}
        for name, times in measure_latency(calls, repeats).items():
            latency[name].update({f"b{size}_{key}": value for key, value in times.items()})
    for name, runner in runners.items():
        if not name.startswith("eager"):
            base = latency["eager_cuda" if runner.device == "cuda" else "eager"]
            for key in [key for key in base if key.endswith("_median_ms")]:
                latency[name][f"speedup_{key.removesuffix('_median_ms')}"] = base[key] / latency[name][key]
    return latency
