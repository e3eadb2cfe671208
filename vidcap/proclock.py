"""A lock that belongs to one process and dies with it: an exclusive POSIX record lock (``lockf``)
on a file. The trainer's run lock (train/run_lock.py) and ``caption serve``'s temporary folder use it.

Why not ``flock``: a flock belongs to the open file, and every child forked after it was taken
shares it -- DataLoader workers, forked without exec, held a SIGKILLed trainer's run lock until
they noticed their parent was gone (up to torch's 5 s watchdog), and a ``--resume`` one second
after the kill was refused as "another trainer is using this run (pid N)" with pid N already dead.
A POSIX lock is the process's own: children do not inherit it, and the kernel drops it the moment
the process dies, however it dies.

Its one rule: closing *any* descriptor of the file in the process drops the lock, so a holder
opens the file once and keeps that descriptor (both users do; nothing else opens these files).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path


def try_lock(path: str | Path) -> int | None:
    """Open (creating) `path` and lock it for this process: its descriptor (keep it open: closing it
    unlocks), or None when another process holds the lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):  # held: EAGAIN on Linux, EACCES elsewhere
            return None
        raise
    return fd


def write_pid(fd: int) -> None:
    """Record this process's pid in the locked file, for the message of whoever finds it locked."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def read_pid(path: str | Path) -> int | None:
    """The pid a holder recorded in `path`, or None. Only for a lock this process does not hold:
    reading opens and closes the file, which would drop our own (the module's rule)."""
    try:
        text = Path(path).read_bytes()[:64].decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
