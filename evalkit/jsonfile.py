"""Reading the text and JSON files a user hands us (annotations, predictions, references): every
way such a file can be wrong is one UserError naming the file -- and the position, where there is
one -- instead of a decoder traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evalkit.errors import UserError


def read_text(path: str | Path, what: str = "file") -> str:
    """The file as UTF-8 text; `what` names it in the error ("annotation file", "predictions")."""
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO would block, /dev/zero never end
        raise UserError(f"{path}: {what} is not a regular file")
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: {what} is a directory, expected a file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_json(path: str | Path, what: str = "file") -> Any:
    """The parsed JSON; invalid JSON, NaN/Infinity and nesting too deep for the parser are errors."""

    def no_constants(name: str):
        raise ValueError(f"{name} is not JSON")

    text = read_text(path, what)
    try:
        return json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError as e:
        raise UserError(f"{path}: invalid JSON: {e}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid JSON: nested too deeply") from None
