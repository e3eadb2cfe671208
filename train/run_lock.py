"""One trainer per run folder: an exclusive ``flock`` on ``RUN/<stage dir>/.lock``.

Two trainers on one run would rename each other's checkpoints and interleave metrics.jsonl. The
second one to start gets a UserError naming the holder's pid (written into the lock file). flock
locks die with their process, so a killed trainer never leaves a stale lock behind, and a kill -9
needs no clean-up before ``--resume``.

The lock belongs to a process, not to a Trainer object: a process may build several Trainers on
one run (tests, notebooks); they share the lock, which is released when the last one lets go or
the process ends.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from vidcap.errors import UserError

_HELD: dict[str, list] = {}  # lock path -> [fd, holders]


def acquire(run_dir: str | Path) -> Path:
    """Lock `run_dir` for this process (re-entrant); raise a UserError if another process holds it."""
    path = Path(run_dir) / ".lock"
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key][1] += 1
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"{run_dir}: another trainer is using this run (pid {holder}); wait for it to finish "
                        "or choose another --run") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = [fd, 1]
    return path


def release(run_dir: str | Path) -> None:
    """Let go of one acquire(); the lock is freed with the last one."""
    key = os.path.realpath(Path(run_dir) / ".lock")
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        os.close(held[0])  # closing the descriptor releases the flock
