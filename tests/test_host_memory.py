"""keep_host_memory: a large block freed and allocated again (what XLA:CPU does with a step's
temporaries) is reused instead of being faulted in afresh."""

import subprocess
import sys

import pytest

from cpt_jax.host_memory import is_glibc

CHILD = """
import ctypes, resource, sys, threading
from cpt_jax.host_memory import keep_freed_memory
kept = sys.argv[1] == "keep" and keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def steps(out):
    for _ in range(4):  # like a step's temporaries: a 64 MB block, written, freed (plain malloc, as XLA's)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(64 << 20)
        ctypes.memset(block, 1, 64 << 20)
        libc.free(block)
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

faults = []
worker = threading.Thread(target=steps, args=(faults,))  # XLA allocates on its worker threads
worker.start(); worker.join()
print(kept, faults[-1])
"""


def faults_of_last_step(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(not is_glibc(), reason="the setting is glibc's malloc")
def test_kept_memory_is_reused_without_page_faults():
    kept, faults = faults_of_last_step("keep")
    assert kept == "True" and faults < 100
    _, system_faults = faults_of_last_step("system")
    assert system_faults > 10_000  # 64 MB of fresh 4 KiB pages (the default: mmap, then unmap)
