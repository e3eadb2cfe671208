"""Reading the text and JSON files a user hands us (annotations, predictions, references): every
way such a file can be wrong is one UserError naming the file -- and the position, where there is
one -- instead of a decoder traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vidcap.errors import UserError


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
        return json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError as e:
        raise UserError(f"{path}: invalid JSON: {e}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid JSON: nested too deeply") from None
