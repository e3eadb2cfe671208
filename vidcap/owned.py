"""Which output folders a command may delete or replace for ``--overwrite``: only those it made.

Round 3 of the adversarial review lost a user's files three ways (P-36, P-37, P-40): ``pipeline
build --overwrite`` deleted any folder holding a ``shards/`` directory, ``pipeline synth
--overwrite`` any non-empty folder, and ``train export --overwrite`` wrote over a foreign
``config.json``. One rule now, for the three commands:

- A folder is ours when it carries the marker file :data:`MARKER` naming the command that made it
  (written when the command starts filling the folder), or when *everything* in it belongs to the
  command's layout (a folder made before the marker existed; ``recognise``). Anything else --
  a user's file beside a ``shards/`` folder, a Hugging Face model folder -- is refused in one line
  that names what is there, and nothing is deleted.
- A symlinked ``--out`` is resolved first (:func:`resolve_out`): the folder it points to is what
  gets checked and replaced, and the link stays (``rmtree`` refuses links, P-38).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from vidcap.atomic import write_json_atomic
from vidcap.errors import UserError

MARKER = ".vidcap-made-by.json"
_MAX_MARKER_BYTES = 4096


def resolve_out(out: str | Path) -> Path:
    """The absolute real path of `out` (a symlink resolved: its target is the folder the command works in)."""
    return Path(os.path.realpath(out))


def mark(folder: Path, command: str) -> None:
    """Write the marker: `folder` was made by `command` and that command may replace it later."""
    write_json_atomic(folder / MARKER, {"made_by": command})


def made_by(folder: Path) -> str | None:
    """The command the marker in `folder` names, or None (no marker, or not a small regular JSON file)."""
    path = folder / MARKER
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with open(path, "rb") as f:
            doc = json.loads(f.read(_MAX_MARKER_BYTES))
    except (OSError, ValueError):
        return None
    return doc.get("made_by") if isinstance(doc, dict) and isinstance(doc.get("made_by"), str) else None


def only_names(folder: Path, allowed: Callable[[str], bool]) -> bool:
    """Whether every entry of `folder` has a name `allowed` accepts (and `folder` is a real folder)."""
    try:
        return folder.is_dir() and not folder.is_symlink() and all(allowed(p.name) for p in folder.iterdir())
    except OSError:
        return False


def _listing(folder: Path, n: int = 4) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_ours(folder: Path, command: str, what: str, recognise: Callable[[Path], bool],
               flag: str = "--out") -> None:
    """Refuse (a UserError naming what is there) unless the non-empty `folder` was made by `command`:
    its marker names it, or `recognise(folder)` finds only the command's own layout."""
    if made_by(folder) == command or recognise(folder):
        return
    raise UserError(f"{flag} {folder}: not {what} (it holds {_listing(folder)}); refusing to replace it for "
                    f"--overwrite: remove it yourself or choose another {flag}")


def remove_ours(folder: Path, command: str, what: str, recognise: Callable[[Path], bool],
                flag: str = "--out") -> None:
    """:func:`check_ours`, then delete the folder (``folder`` resolved: never a symlink)."""
    check_ours(folder, command, what, recognise, flag)
    shutil.rmtree(folder)
