"""Sample K frames from a video file: the one frame-sampling routine every part of vidcap uses.

Rule (deterministic): with N decodable frames, split the clip into K equal segments and take the
frame at each segment's centre, index_i = floor((i + 0.5) * N / K), i = 0..K-1. With N < K some
indices repeat (recorded as ``repeated``). Decoding tries decord first (seeks, decodes only what
it needs, resizes in the decoder); if decord fails or the container claims frames it cannot
deliver, ffmpeg decodes the whole stream at the target size, counts the real frames and the same
rule picks from them.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


class DecodeError(Exception):
    """A clip that cannot be used; the message says why."""


@dataclass
class SampledFrames:
    frames: np.ndarray  # (K, size, size, 3) uint8 RGB
    indices: list[int]
    timestamps: list[float]  # seconds
    n_frames: int
    fps: float
    duration: float
    decoder: str  # "decord" | "ffmpeg"
    repeated: bool
    notes: list[str] = field(default_factory=list)


def segment_centres(n_frames: int, k: int) -> list[int]:
    if n_frames <= 0:
        raise DecodeError("no decodable frames")
    return [min(n_frames - 1, math.floor((i + 0.5) * n_frames / k)) for i in range(k)]


def _decord_sample(path: Path, k: int, size: int) -> SampledFrames:
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=size, height=size, num_threads=1)
    n = len(vr)
    fps = float(vr.get_avg_fps()) or 0.0
    idx = segment_centres(n, k)
    frames = vr.get_batch(idx).asnumpy()
    if frames.shape != (k, size, size, 3):
        raise DecodeError(f"decord returned frames of shape {frames.shape}")
    stamps = [float(t[0]) for t in vr.get_frame_timestamp(idx)]
    return SampledFrames(frames, idx, stamps, n, fps, n / fps if fps else 0.0, "decord", n < k)


def _ffmpeg_sample(path: Path, k: int, size: int) -> SampledFrames:
    import ffmpeg

    try:
        probe = ffmpeg.probe(str(path))
    except ffmpeg.Error as e:
        raise DecodeError(f"ffprobe failed: {_last_line(e.stderr)}") from None
    streams = [s for s in probe.get("streams", []) if s.get("codec_type") == "video"]
    if not streams:
        raise DecodeError("no video stream")
    num, _, den = streams[0].get("avg_frame_rate", "0/1").partition("/")
    fps = float(num) / float(den) if den and float(den) else 0.0
    try:
        raw, _ = (
            ffmpeg.input(str(path))
            .output("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{size}x{size}", map="0:v:0",
                    fps_mode="passthrough", sws_flags="bicubic")
            .run(capture_stdout=True, capture_stderr=True)
        )
    except ffmpeg.Error as e:
        raise DecodeError(f"ffmpeg decode failed: {_last_line(e.stderr)}") from None
    n = len(raw) // (size * size * 3)
    all_frames = np.frombuffer(raw, np.uint8)[: n * size * size * 3].reshape(n, size, size, 3)
    idx = segment_centres(n, k)
    stamps = [i / fps if fps else 0.0 for i in idx]
    return SampledFrames(all_frames[idx].copy(), idx, stamps, n, fps, n / fps if fps else 0.0, "ffmpeg", n < k)


def _decord_message(e: Exception) -> str:
    """decord's first error line without its "[HH:MM:SS] file.cc:123: " prefix (shards stay deterministic)."""
    lines = str(e).strip().splitlines()
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", lines[0]) if lines else type(e).__name__


def _last_line(stderr: bytes | None) -> str:
    lines = (stderr or b"").decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "unknown error"


def sample_frames(path: str | Path, k: int = 5, size: int = 224) -> SampledFrames:
    """K frames at segment centres, resized to size x size RGB; raises DecodeError with the reason."""
    path = Path(path)
    if not path.exists():
        raise DecodeError("file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise DecodeError("file is empty (0 bytes)")
    try:
        return _decord_sample(path, k, size)
    except Exception as e:  # decord raises its own DECORDError, RuntimeError, IndexError...
        first = f"decord: {_decord_message(e)}"
    result = _ffmpeg_sample(path, k, size)
    result.notes.append(first)
    return result


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
