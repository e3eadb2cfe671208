"""`caption serve`'s temporary folder: private (``mkdtemp``), removed when the server stops -- and,
since a SIGKILLed server removes nothing, removed by the next server that starts.

How a starting server tells a dead server's folder from a live one's: each folder holds ``.owner``,
locked by its server for as long as it runs (vidcap.proclock: a POSIX lock, dropped by the kernel
the moment the process dies, and not shared with the decoder subprocesses). A ``vidcap-serve-*``
folder of this user whose ``.owner`` can be locked has no server: it is removed. ``.owner`` is
locked under another name and then renamed into place, so no one ever finds it unlocked while its
server lives. Folders without ``.owner`` (a server of an older vidcap, or one killed in the
microseconds between ``mkdtemp`` and the rename) are left alone: nothing says they are dead.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vidcap.proclock import try_lock, write_pid

PREFIX = "vidcap-serve-"
OWNER = ".owner"


def remove_stale(parent: str | Path | None = None) -> list[Path]:
    """Remove the folders of servers that are no longer running under `parent` (default: the system
    temp folder); the folders removed."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    try:
        entries = sorted(parent.glob(f"{PREFIX}*"))
    except OSError:
        return removed
    for d in entries:
        try:
            if d.is_symlink() or not d.is_dir() or d.stat().st_uid != os.getuid() or not (d / OWNER).is_file():
                continue
            fd = try_lock(d / OWNER)
        except OSError:  # gone meanwhile (another server cleaning), or not ours to read
            continue
        if fd is None:  # its server is running
            continue
        try:
            shutil.rmtree(d, ignore_errors=True)
        finally:
            os.close(fd)
        if not d.exists():
            removed.append(d)
    return removed


@contextmanager
def scratch_folder() -> Iterator[str]:
    """A new private temporary folder owned by this process, after removing dead servers' folders;
    removed on exit. Says on stderr which stale folders it removed."""
    removed = remove_stale()
    if removed:
        print(f"caption serve: removed {len(removed)} temporary folder(s) of servers that were killed: "
              f"{', '.join(map(str, removed[:3]))}{' ...' if len(removed) > 3 else ''}", file=sys.stderr, flush=True)
    path = tempfile.mkdtemp(prefix=PREFIX)
    fd = try_lock(os.path.join(path, f"{OWNER}.new"))
    if fd is None:  # a folder only we know of: cannot happen
        raise RuntimeError(f"{path}: cannot lock {OWNER}.new")
    write_pid(fd)
    os.rename(os.path.join(path, f"{OWNER}.new"), os.path.join(path, OWNER))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)
