"""Fail early, with the install command, when the ffmpeg binary is missing."""

import shutil

from vidcap.errors import UserError


def require_ffmpeg() -> str:
    """Return the path of ``ffmpeg`` or raise a UserError saying how to install it."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise UserError(
            "ffmpeg not found on PATH: install it (Debian/Ubuntu: `apt-get install -y ffmpeg`; "
            "macOS: `brew install ffmpeg`) or run `make setup`"
        )
    return path
