"""The flag convention every console script follows (``pipeline``, ``train``, ``evalkit``, ``caption``),
beside the one error path of :mod:`vidcap.errors`. Written down in docs/cli.md; in short:

- ``--out DIR`` is always a folder the command writes into. A command whose result is one file
  names that flag for the file's format: ``caption --jsonl FILE``, ``train probe --json FILE``,
  ``evalkit score --json FILE`` (and ``--per-clip FILE.csv``), ``pipeline inspect --png FILE``.
  Those three commands used to spell their file ``--out FILE``; that spelling still works, hidden
  from ``--help`` (:func:`add_file_flag`), so no script breaks.
- ``--workers N`` always means N processes working on clips at once -- decoding, encoding or
  building shards -- never threads and never queued requests (:func:`add_workers`).
- A value out of range is one line naming the flag, the value and the range (:func:`check_range`).
- A command with sub-commands and no action of its own uses argparse sub-parsers (``pipeline``,
  ``evalkit``); a command that is itself an action and has sub-commands beside it (``train
  --stage N``, ``caption PATH``) looks its first word up in a table (:func:`subcommand`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

from vidcap.errors import UserError


def check_range(flag: str, value: float | None, lo: float, hi: float | None, *, above: bool = False,
                unit: str = "") -> None:
    """A UserError ``FLAG VALUE: must be LO..HI`` (``> LO and <= HI`` with `above`; ``>= LO`` without
    a highest) when `value` is outside; None passes (a flag left unset)."""
    if value is None:
        return
    ok = (lo < value if above else lo <= value) and (hi is None or value <= hi)
    if not ok:
        raise UserError(f"{flag} {value:g}: {range_text(lo, hi, above=above, unit=unit)}")


def range_text(lo: float, hi: float | None, *, above: bool = False, unit: str = "") -> str:
    """The second half of a range message, shared by the CLI and the Python API's ValueErrors."""
    suffix = f" ({unit})" if unit else ""
    if hi is None:
        return (f"must be > {lo:g}" if above else f"must be >= {lo:g}") + suffix
    return (f"must be > {lo:g} and <= {hi:g}" if above else f"must be {lo:g}..{hi:g}") + suffix


def add_workers(p: argparse.ArgumentParser, default: int | None, what: str, default_text: str | None = None
                ) -> argparse.Action:
    """``--workers N``: processes working on clips at once (`what` says which processes)."""
    shown = default_text if default_text is not None else str(default)
    return p.add_argument("--workers", type=int, default=default,
                          help=f"processes working on clips at once: {what} (default {shown})")


def add_file_flag(p: argparse.ArgumentParser, flag: str, dest: str, help: str, **kw) -> None:
    """A one-file output named for its format (``--jsonl``, ``--json``), and ``--out`` as its old,
    hidden spelling: ``--out`` is a folder everywhere else."""
    p.add_argument(flag, dest=dest, help=help, **kw)
    p.add_argument("--out", dest=dest, help=argparse.SUPPRESS)


def subcommand(argv: list[str], table: Mapping[str, Callable[[list[str]], None]]
               ) -> tuple[str, Callable[[list[str]], None]] | None:
    """The sub-command named by argv's first word and its entry point, or None (the command's own
    action). Only the exact first word counts, so a file named ``serve`` is ``./serve``."""
    if argv[:1] and argv[0] in table:
        return argv[0], table[argv[0]]
    return None
