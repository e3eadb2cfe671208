"""vidcap.allocator: with glibc told to keep freed memory, a loop that allocates and frees a large
tensor stops faulting its pages in again each round (page-fault counts, not seconds: they repeat)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

LOOP = """
import resource, sys, torch
from vidcap.allocator import keep_freed_memory
torch.set_num_threads(1)
applied = keep_freed_memory()
x = torch.randn(32, 1024, 256)  # 32 MiB: at glibc's largest dynamic mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    y = (x * 2).relu()  # a fresh 32 MiB result, freed each round, as a step's activations are
    del y
print(int(applied), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_value: str) -> tuple[bool, int]:
    env = {**os.environ, "VIDCAP_MALLOC": env_value}
    out = subprocess.run([sys.executable, "-c", LOOP], env=env, capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied == "1", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_kept_memory_is_not_faulted_in_again():
    applied, kept = _faults("")
    off, default = _faults("system")
    assert applied and not off  # VIDCAP_MALLOC=system switches it off
    pages = 40 * (32 << 20) // 4096
    assert default > 0.5 * pages  # glibc's default: most rounds fault the whole result in again
    assert kept < 0.2 * default, (kept, default)
