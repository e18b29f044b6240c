"""A process that runs the networks keeps the memory it frees: a large block allocated again costs no page faults."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from hdkd.memory import ENV
from tests.helpers import REPO

# Two 64 MiB blocks from malloc one after the other (above glibc's largest mmap threshold, 32 MiB), each
# written through and freed, as PyTorch's CPU allocator does with a tensor: prints whether the process changed
# its malloc and the minor page faults of the second block. (Not numpy: it asks for huge pages itself.)
SCRIPT = """
import ctypes
import resource
from hdkd.memory import keep_freed_memory

kept = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)

def faults_of_a_large_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(64 * 2**20)
    ctypes.memset(block, 1, 64 * 2**20)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_a_large_block()
print(kept, faults_of_a_large_block())
"""


def page_size() -> int:
    """The page a fresh anonymous mapping faults in: 2 MiB where transparent huge pages are always on."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return 2**21 if thp.is_file() and "[always]" in thp.read_text() else 4096


PAGES = 64 * 2**20 // page_size()  # one fault per page of a block glibc maps afresh


def run(setting: str) -> tuple[str, int]:
    env = {**os.environ, ENV: setting}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_a_kept_heap_serves_a_large_block_again_without_page_faults():
    kept, faults = run("1")
    assert kept == "True"
    assert faults <= PAGES // 20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_without_it_glibc_maps_and_faults_in_a_large_block_each_time():
    kept, faults = run("0")
    assert kept == "False"
    assert faults > PAGES // 2
