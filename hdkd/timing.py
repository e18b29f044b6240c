"""One latency timer, for the compile stage (artifacts against eager) and evaluate (ms per image), and
the compile stage's latency table of every runner at batch 1 and 16.

Hand-written rather than `torch.utils.benchmark.Timer`: that times one statement at a time and
reports block means, while a fair comparison of backends needs their calls *interleaved* (a, b, c,
a, b, c, ...), so that load from other processes hits every backend alike, and per-call p90s.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from hdkd.runtime import Runner

WARMUP = 3


def cpu_name() -> str:
    """The CPU model and torch's vector ISA: latency figures mean little without them."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}"


def measure_latency(
    calls: Mapping[str, Callable[[], object]], repeats: int, warmup: int = WARMUP
) -> dict[str, dict[str, float]]:
    """Median and p90 milliseconds of each call, `{name: {"median_ms", "p90_ms"}}`.

    Rounds are interleaved, so ratios stay fair on a busy machine even when absolute times do not.
    A call must return only when its work is done (synchronise CUDA inside it).
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            began = time.perf_counter()
            call()
            times[name].append(1000 * (time.perf_counter() - began))
    return {
        name: {"median_ms": float(np.median(values)), "p90_ms": float(np.percentile(values, 90))}
        for name, values in times.items()
    }


LATENCY_BATCHES = (1, 16)


def latency_batch(images: np.ndarray, size: int, image_size: int) -> np.ndarray:
    """`size` preprocessed real images (repeated when the split is smaller)."""
    from hdkd.runtime import preprocess

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
