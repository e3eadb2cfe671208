"""Reading the text and JSON files a user hands us (annotations, predictions, references): every
way such a file can be wrong is one UserError naming the file -- and the position, where there is
one -- instead of a decoder traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vidcap.errors import UserError

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def read_text(path: str | Path, what: str = "file") -> str:
    """The file as UTF-8 text; `what` names it in the error ("annotation file", "predictions")."""
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO would block, /dev/zero never end
        raise UserError(f"{path}: {what} is not a regular file")
    try:
        return decode_text(path.read_bytes(), path)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: {what} is a directory, expected a file") from None


def decode_text(data: bytes, where: str | Path) -> str:
    """Bytes as UTF-8 text; `where` (a path or URL) names them in the error."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_json(path: str | Path, what: str = "file") -> Any:
    """The parsed JSON; invalid JSON, NaN/Infinity and nesting too deep for the parser are errors."""
    return parse_json(read_text(path, what), path)


def parse_json(text: str | bytes, where: str | Path) -> Any:
    """`text` (a file's content; bytes must be UTF-8) parsed as JSON; errors name `where`."""

    def no_constants(name: str):
        raise ValueError(f"{name} is not JSON")

    path = where
    if isinstance(text, bytes):
        text = decode_text(text, where)
    try:
        value = json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError as e:
        raise UserError(f"{path}: invalid JSON: {e}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid JSON: nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text):  # only a \\uD800-\\uDFFF escape can make a surrogate
        _check_strings(value, path)
    return value


def _check_strings(value: Any, where: str | Path) -> None:
    """Refuse a lone surrogate (``"\\ud800"``): valid JSON, but no Unicode text -- it could not be
    written back as UTF-8 (a shard's json, a CSV) and would end a later step with a traceback."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str) and not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise UserError(f"{where}: invalid JSON: the string {v[:40]!r} holds a lone surrogate "
                                f"(U+{ord(v[e.start]):04X}), which is not Unicode text") from None
