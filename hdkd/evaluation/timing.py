"""One latency timer, for evaluate (ms per image) and the compile stage (artifacts against eager).

Hand-written rather than `torch.utils.benchmark.Timer`: backends are timed in alternating *blocks*
(a a a, b b b, b b b, a a a, ...) with per-call p90s. Blocks, not call-by-call interleaving: a backend's
thread pool spins for a while after each call and steals the cores from whatever runs next, which
made eager PyTorch at batch 1 look 1.7x slower than it is (paper preset, 2-core AVX-512 EPYC: 50 ms
in blocks, 84 ms interleaved) and flattered ONNX Runtime accordingly. Alternating the order across
rounds still spreads load from other processes over every backend.
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
SETTLE_SECONDS = 0.2


# The CPU flags that decide which kernels oneDNN and ONNX Runtime run (fp32, int8 VNNI, bf16, AMX).
VECTOR_FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}


def cpu_name() -> str:
    """The CPU model, torch's vector ISA and the CPU's vector flags: speed figures mean little without them."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    flags = sorted(set(cpuinfo.read_text().split()) & VECTOR_FLAGS) if cpuinfo.is_file() else []
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{name}, {os.cpu_count()} cores, {isa} ({' '.join(flags) or 'no flags read'})"


def measure_latency(
    calls: Mapping[str, Callable[[], object]], repeats: int, warmup: int = WARMUP, blocks: int = 4
) -> dict[str, dict[str, float]]:
    """Median and p90 milliseconds of each call, `{name: {"median_ms", "p90_ms"}}`, from about `repeats`
    timed calls each. A call must return only when its work is done (synchronise CUDA inside it)."""
    per_block = max(1, -(-repeats // blocks))
    order = list(calls)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for block in range(blocks):
        for name in order if block % 2 == 0 else order[::-1]:
            time.sleep(SETTLE_SECONDS)  # the previous backend's threads stop spinning
            call = calls[name]
            for _ in range(warmup if block == 0 else 1):  # warm up, then re-warm caches and thread pool
                call()
            for _ in range(per_block):
                began = time.perf_counter()
                call()
                times[name].append(1000 * (time.perf_counter() - began))
    return {
        name: {"median_ms": float(np.median(values)), "p90_ms": float(np.percentile(values, 90))}
        for name, values in times.items()
    }
