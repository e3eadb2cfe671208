"""The one user-error path of every vidcap console script (`pipeline`, `train`, `evalkit`, `caption`).

A problem the user can fix -- bad input, a bad argument, a missing tool, a full disk -- ends the
command with exit status 2 and exactly one line on stderr, ``PROG: error: ...``, naming the file,
key or setting at fault. Anything else is a bug and keeps its traceback. ``VIDCAP_DEBUG=1`` shows
the traceback of user errors too.

It lives in the foundation (``vidcap/``), which every room imports and which imports none of them;
model's own ``CheckpointError`` is handed to :func:`cli_errors` by the commands that load checkpoints.
The flag convention every command follows is beside it, in :mod:`vidcap.flags`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """Bad input or a missing tool; the message names the file, key or fix, on one line."""

    def __init__(self, message: str = ""):
        # torch's DataLoader re-raises a worker's exception as type(e)(text of the worker's traceback);
        # keep the original one line, which is the traceback's last line after "ClassName: ".
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def file_error_line(e: OSError) -> str | None:
    """One line for an operating-system error that names a path (disk full, no permission, not a
    directory...): ``PATH: cause``. None for errors without a path, which stay tracebacks."""
    if e.filename is None:
        return None
    where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
    return f"{where}: {e.strerror or type(e).__name__}"


def one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


class CliErrors:
    """Mutable context of :func:`cli_errors`: ``prog`` can be refined once the sub-command is known."""

    def __init__(self, prog: str):
        self.prog = prog


@contextmanager
def cli_errors(prog: str, also: tuple[type[BaseException], ...] = ()) -> Iterator[CliErrors]:
    """Run a command's body; turn user errors (UserError, `also`, OSErrors naming a path) into
    ``PROG: error: ...`` on stderr and exit status 2."""
    ctx = CliErrors(prog)
    debug = os.environ.get("VIDCAP_DEBUG") == "1"
    try:
        yield ctx
    except (UserError, *also) as e:
        if debug:
            raise
        line = str(e) or type(e).__name__
    except OSError as e:
        line = file_error_line(e)
        if line is None or debug:
            raise
    else:
        return
    print(f"{ctx.prog}: error: {one_line(line)}", file=sys.stderr)
    sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is the same single line as every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")
