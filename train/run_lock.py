"""One trainer per run folder: an exclusive lock on ``RUN/<stage dir>/.lock`` (vidcap.proclock).

Two trainers on one run would rename each other's checkpoints and interleave metrics.jsonl. The
second one to start gets a UserError naming the holder's pid (written into the lock file). The lock
is a POSIX record lock, the trainer process's own: its DataLoader workers, forked after it was
taken, do not share it, and the kernel drops it the moment the trainer dies -- so a kill -9 needs no
clean-up before ``--resume``, even while the killed trainer's orphaned workers are still exiting.
A lock found held by a pid that no longer runs is waited for a few seconds (a process being torn
down can hold it a moment longer), then reported.

The lock belongs to a process, not to a Trainer object: a process may build several Trainers on
one run (tests, notebooks); they share the lock, which is released when the last one lets go or
the process ends.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from vidcap.errors import UserError
from vidcap.proclock import pid_alive, read_pid, try_lock, write_pid
from vidcap.train.run_folder import LOCK

_HELD: dict[str, list] = {}  # lock path -> [fd, holders]
DEAD_HOLDER_WAIT = 10.0  # seconds to wait for a lock whose recorded holder is no longer running


def acquire(run_dir: str | Path) -> Path:
    """Lock `run_dir` for this process (re-entrant); raise a UserError if another process holds it."""
    path = Path(run_dir) / LOCK
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key][1] += 1
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = None
    while (fd := try_lock(path)) is None:
        holder = read_pid(path)
        if holder is not None and not pid_alive(holder):
            deadline = deadline or time.monotonic() + DEAD_HOLDER_WAIT
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
        raise UserError(f"{run_dir}: another trainer is using this run (pid {holder or 'unknown'}); wait for it to "
                        "finish or choose another --run")
    write_pid(fd)
    _HELD[key] = [fd, 1]
    return path


def release(run_dir: str | Path) -> None:
    """Let go of one acquire(); the lock is freed with the last one."""
    key = os.path.realpath(Path(run_dir) / LOCK)
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        os.close(held[0])  # closing the descriptor releases the lock
