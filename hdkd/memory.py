"""A process that runs the networks on batches keeps the memory it frees, so large tensors stop costing page
faults on every step: training (`Trainer`), evaluation (`predict_proba`) and PyTorch inference (`TorchRunner`).

glibc's malloc serves a request above its mmap threshold with a fresh `mmap` and returns it to the kernel
on `free`; the threshold adapts to the freed sizes but never beyond 32 MiB. At the paper preset, batch 16,
many activations and gradients are larger (16x384x56x56 in float32 is 77 MB), so every step mapped them anew
and faulted in every page: 1.5 million minor page faults per step, 6 GB of fresh pages. With mmap off and the
heap's top kept, freed blocks are reused: no page faults after the first steps.

Side by side (benchmarks/allocator.py, paper preset, batch 16, 2 threads, 2-core AMD EPYC with AVX-512, 1-min
load 1.1-2.0, three runs): a student step 1.77-1.80x faster, an HDKD step 1.51-1.60x, the student's eval-mode
forward pass 1.12-1.22x. The small and tiny presets have no such blocks and run as before. The price is a higher
peak resident set, freed memory staying with the process: 5.4-5.8 against 4.4-4.6 GB there.
`HDKD_KEEP_FREED_MEMORY=0` keeps glibc's default.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

ENV = "HDKD_KEEP_FREED_MEMORY"

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_UP_TO = 2**31 - 1  # bytes of free heap top kept before trimming: mallopt takes an int


def _requested() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


@functools.cache
def keep_freed_memory() -> bool:
    """Make this process's glibc malloc serve every request from its heap and keep freed memory (at most
    2 GiB of free heap top), instead of mapping and unmapping large blocks. Returns whether it did: not off
    glibc (macOS, musl, Windows) nor with `HDKD_KEEP_FREED_MEMORY=0`. Once per process; it cannot be undone
    faithfully (setting either option also freezes glibc's adaptive threshold), so it is a process's choice."""
    if not _requested() or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_UP_TO))
