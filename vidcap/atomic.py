"""Atomic file writes, the project's one helper: a crash leaves the old file or the new one, never
half of one, and a failed write leaves no temporary file behind. For files that grow row by row
(``caption --out``), :class:`LineAppender`: every row whole or absent.

- The temporary file gets a unique name (``mkstemp`` in the target's folder), so two writers of the
  same path never rename each other's half-written file.
- A failed write (disk full, file too large, ...) removes the temporary file and raises an OSError
  that names the *target* path, so the user-error path prints ``PATH: No space left on device``.
- ``write`` callbacks get a file object that remembers the first OSError of its writes: torch.save
  turns a failed write into a RuntimeError naming no file, and that is not a message for anyone.

It lives in evalkit, the bottom layer that pipeline and train import (model imports nothing of the
project: ``model.checkpoint.save_checkpoint`` writes to any file object and train places the file
with this helper).
"""

from __future__ import annotations

import json
import os
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


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(f)`` on a temporary file beside `path`, then fsync and rename it to `path`."""
    path = Path(path)
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


class LineAppender:
    """Append-only JSON Lines where each row is one ``write()`` to an ``O_APPEND`` file: a row is in
    the file whole or not at all, and a kill loses nothing written before it (rows reach the kernel
    as they are written; no userspace buffer to lose). A row torn by a full disk or a crash in the
    middle of a write is the file's last, newline-less line: opening cuts it off, so a re-run redoes
    that row. ``rows`` are the complete rows already there when opened."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[Any] = []
        if self.path.exists():
            with open(self.path, "rb") as f:
                data = f.read()
            whole = data[: data.rfind(b"\n") + 1]
            for n, line in enumerate(whole.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    self.rows.append(json.loads(line))
                except ValueError:
                    raise UserError(f"{self.path}: line {n} is not JSON; not a file this command wrote") from None
            if len(whole) < len(data):
                os.truncate(self.path, len(whole))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def write(self, row: Any) -> None:
        data = (json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        try:
            if os.write(self.fd, data) != len(data):  # a regular file writes all of it or fails (ENOSPC)
                raise OSError(28, "No space left on device (row cut short)", str(self.path))
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from e

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> LineAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
