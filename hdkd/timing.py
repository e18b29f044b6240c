"""One latency timer, for the compile stage (artifacts against eager) and evaluate (ms per image).

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

import numpy as np
import torch

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
