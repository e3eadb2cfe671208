"""Atomic file writes, the project's one helper: a crash leaves the old file or the new one, never
half of one, and a failed write leaves no temporary file behind. For files that grow row by row
(``caption --out``), :class:`LineAppender`: every row whole or absent.

- The temporary file gets a unique name (``mkstemp`` in the target's folder), so two writers of the
  same path never rename each other's half-written file.
- A failed write (disk full, file too large, ...) removes the temporary file and raises an OSError
  that names the *target* path, so the user-error path prints ``PATH: No space left on device``.
- ``write`` callbacks get a file object that remembers the first OSError of its writes: torch.save
  turns a failed write into a RuntimeError naming no file, and that is not a message for anyone.

It lives in vidcap/, the foundation every layer imports (model imports nothing of the
project: ``model.checkpoint.save_checkpoint`` writes to any file object and train places the file
with this helper).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from vidcap.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


class _Recording:
    """A binary file wrapper that keeps the first OSError raised by write()."""

    def __init__(self, f: BinaryIO):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()

    def __getattr__(self, name: str):  # tell, seek, ... of the real file
        return getattr(self.f, name)


KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
         (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words, for the one-line refusals."""
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


def check_replaceable(path: str | Path) -> None:
    """Refuse to rename anything over `path` but a regular file (or nothing). Why: a rename replaces
    whatever is there, and ``--json /dev/null`` run as root replaced /dev/null for the whole machine
    (round 3, P-50); a symlink counts as what it points to, so a link to a device is refused too."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: {kind_of(mode)}, not a regular file; refusing to replace it (write to a file)")


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(f)`` on a temporary file beside `path`, then fsync and rename it to `path`.
    `path` must be a regular file or absent (:func:`check_replaceable`)."""
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    rec = None
    try:
        with os.fdopen(fd, "wb") as f:
            rec = _Recording(f)
            write(rec)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        cause = rec.error if rec is not None and rec.error is not None else e
        if isinstance(cause, OSError) and cause.errno is not None:
            raise OSError(cause.errno, cause.strerror, str(path)) from e
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


MAX_ROW_BYTES = 1 << 20  # a caption row is a path and a sentence; a longer "row" is not one of ours


class LineAppender:
    """Append-only JSON Lines where each row is one ``write()`` to an ``O_APPEND`` file: a row is in
    the file whole or not at all, and a kill loses nothing written before it (rows reach the kernel
    as they are written; no userspace buffer to lose). ``rows`` are the complete rows already there.

    Only a file of our own rows is appended to (round 3, C-1: a json.dump output without a newline
    was cut as a "torn row"): every complete line must be JSON and the first one a row
    (``is_row``). A last line without a newline is kept when it is a whole row (another tool wrote
    it; a newline is added) and cut only when the file is recognised as ours by a complete row
    before it -- that is the row a full disk or a crash tore, which a re-run redoes. Any other file
    is refused in one line, nothing changed.

    A path that is not a regular file (``/dev/stdout`` into a pipe, a FIFO, ``/dev/null``) is
    streamed to: nothing is read back (reading a pipe's end hung, C-6; /dev/full's endless zeros
    filled the memory, C-3), and a FIFO without a reader is refused instead of waited on (C-4)."""

    def __init__(self, path: str | Path, is_row: Callable[[Any], bool] = lambda row: True):
        self.path = Path(path)
        self.rows: list[Any] = []
        self.streaming, self._newline_missing = False, False
        try:
            mode: int | None = os.stat(self.path).st_mode
        except FileNotFoundError:
            mode = None
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        if mode is not None and stat.S_ISDIR(mode):
            raise UserError(f"{self.path}: Is a directory")
        if mode is not None and not stat.S_ISREG(mode):
            self.streaming = True
            try:  # non-blocking: a FIFO nobody reads fails with ENXIO instead of waiting forever
                self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    raise UserError(f"{self.path}: a FIFO with no reader; start its reader first") from None
                raise OSError(e.errno, e.strerror, str(self.path)) from None
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
            return
        if mode is not None:
            self._read_rows(is_row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        if self._newline_missing:
            os.write(self.fd, b"\n")

    def _read_rows(self, is_row: Callable[[Any], bool]) -> None:
        foreign = f"{self.path}: {{}}; not a file this command wrote (nothing changed)"
        with open(self.path, "rb") as f:
            n, kept = 0, 0
            while True:
                line = f.readline(MAX_ROW_BYTES + 1)
                if not line:
                    return
                n += 1
                whole = line.endswith(b"\n")
                if len(line) > MAX_ROW_BYTES:
                    raise UserError(foreign.format(f"line {n} is longer than {MAX_ROW_BYTES >> 20} MB"))
                if not line.strip():
                    kept += len(line)
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = ValueError
                if whole and row is ValueError:
                    raise UserError(foreign.format(f"line {n} is not JSON"))
                if row is not ValueError and not self.rows and not is_row(row):
                    raise UserError(foreign.format(f"line {n} is not one of its rows"))
                if not whole:  # the last line, without a newline
                    if row is not ValueError:
                        self.rows.append(row)
                        self._newline_missing = True
                    elif self.rows:  # a row torn by a full disk or a kill: cut it, a re-run redoes it
                        os.truncate(self.path, kept)
                    else:
                        raise UserError(foreign.format("it holds no complete row (no newline)"))
                    return
                self.rows.append(row)
                kept += len(line)

    def write(self, row: Any) -> None:
        data = (json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        try:
            if os.write(self.fd, data) != len(data):  # a regular file or a blocking pipe writes all of it or fails
                raise OSError(28, "No space left on device (row cut short)", str(self.path))
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from e

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> LineAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
