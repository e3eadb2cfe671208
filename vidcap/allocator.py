"""glibc's malloc told to keep freed memory, for the commands that run torch on the CPU.

Why: by default glibc gives every large block back to the kernel the moment it is freed. A block
over the mmap threshold (128 KiB, rising to at most 32 MiB) is unmapped, and the top of the heap is
trimmed past 128 KiB. A torch step on the CPU allocates and frees the same activations every
batch, often far over 32 MiB at batch 16 × 5 frames. So every step faults in every page of them
again, and the kernel zeroes each one first. Measured on 2 cores: `make demo` spent 1,726 of its
5,278 CPU seconds in the kernel, with 624 M minor page faults. One `train eval` (120 clips, beam 3,
a demo running beside it) took 85.8 s wall, 23.7 s of it system time, and 9.11 M faults. With this
module it took 61.0 s wall, 1.6 s system time and 0.44 M faults, with the same metrics and 14% more
peak RSS (1.88 → 2.13 GB). Only both settings together help: raising the mmap threshold alone cut
the faults by 17%, and stopping trimming alone did nothing.

`keep_freed_memory()` applies the settings with `mallopt` at run time. The `MALLOC_*_` variables
would have to be set before the process starts, and a console script cannot do that. It does
nothing off glibc (macOS, musl), and nothing when `VIDCAP_MALLOC=system` asks for glibc's defaults.
Only the console scripts call it. A program that imports vidcap as a library keeps its own
allocator settings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap (glibc 2.36 accepts it: mallopt returns 1)
TRIM_THRESHOLD = 2**31 - 1  # the most an int holds (mallopt takes an int): far more than one step frees
TOP_PAD = 64 << 20  # grow the heap 64 MiB at a time
ENV = "VIDCAP_MALLOC"


def keep_freed_memory() -> bool:
    """Apply the settings above to this process's glibc malloc; True when they were applied."""
    if os.environ.get(ENV, "").strip().lower() == "system":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: musl and macOS have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = [mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD),
               mallopt(M_TOP_PAD, TOP_PAD)]
    return all(r == 1 for r in applied)
