"""Sample K frames from a video file: the one frame-sampling routine every part of vidcap uses.

Rule (deterministic): with N decodable frames, split the clip into K equal segments and take the
frame at each segment's centre, index_i = floor((i + 0.5) * N / K), i = 0..K-1. With N < K some
indices repeat (recorded as ``repeated``). Decoding tries decord first (seeks, decodes only what
it needs, resizes in the decoder); if decord fails or the container claims frames it cannot
deliver, ffmpeg decodes the stream at the target size, counts the real frames and the same rule
picks from them.

The ffmpeg fallback runs in two passes, because the rule needs N before it knows which frames to
keep, and a broken container (the reason we are here) cannot be trusted for N: pass 1 decodes to
ffmpeg's null muxer and reads the delivered frame count; pass 2 decodes again and keeps only the K
picked frames from the raw stream, stopping ffmpeg after the last one. Memory is O(K frames) for any
clip length (the old single pass held every frame: a 10-hour clip needed ~32 GB) at the price of
about twice the decoding on this rare path. A bounded ring or reservoir in one pass could not
give the exact segment centres for an N it learns only at the end. Decoding is single-threaded
like decord's (parallelism is one clip per Dask worker). The per-clip timeout and memory cap of
``pipeline.clip_worker`` cover both passes.

Paths reach decord and ffmpeg as absolute paths, so a file named ``-report`` or ``http:x`` is a
file, never an option or a protocol.
"""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


class DecodeError(Exception):
    """A clip that cannot be used; the message says why, `reason` is its category for the stats."""

    def __init__(self, message: str, reason: str = "undecodable"):
        super().__init__(message)
        self.reason = reason


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
        raise DecodeError("no decodable frames", "no_frames")
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


def _ffmpeg_args(path: Path, size: int) -> list[str]:
    """The command line both passes share: the first video stream of `path`, scaled to size x size."""
    return ["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-i", str(path), "-map", "0:v:0",
            "-fps_mode", "passthrough", "-s", f"{size}x{size}", "-sws_flags", "bicubic", "-filter_threads", "1"]


def _ffmpeg_count(path: Path, size: int) -> int:
    """Pass 1: the number of frames ffmpeg delivers (decoded into the null muxer, nothing kept)."""
    r = subprocess.run([*_ffmpeg_args(path, size), "-f", "null", "-progress", "pipe:1", "-nostats", "-"],
                       capture_output=True)
    counts = re.findall(rb"^frame=\s*(\d+)", r.stdout, re.M)
    if r.returncode != 0 or not counts:
        raise DecodeError(f"ffmpeg decode failed: {_last_line(r.stderr)}", "undecodable")
    return int(counts[-1])


def _ffmpeg_pick(path: Path, size: int, wanted: list[int]) -> np.ndarray:
    """Pass 2: stream raw RGB frames, keep the frames at `wanted`, stop after the last of them."""
    frame_bytes = size * size * 3
    keep: dict[int, np.ndarray] = {}
    proc = subprocess.Popen([*_ffmpeg_args(path, size), "-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        last, index, wanted_set = max(wanted), 0, set(wanted)
        while index <= last:
            buf = proc.stdout.read(frame_bytes)
            if len(buf) < frame_bytes:
                break
            if index in wanted_set:
                keep[index] = np.frombuffer(buf, np.uint8).reshape(size, size, 3)
            index += 1
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    if set(wanted) - set(keep):
        raise DecodeError(f"ffmpeg delivered {index} frames on the second pass, fewer than the {max(wanted) + 1} "
                          "counted on the first", "undecodable")
    return np.stack([keep[i] for i in wanted])


def _ffmpeg_sample(path: Path, k: int, size: int) -> SampledFrames:
    import ffmpeg

    try:
        probe = ffmpeg.probe(str(path))
    except ffmpeg.Error as e:
        raise DecodeError(f"ffprobe failed: {_last_line(e.stderr)}", "undecodable") from None
    streams = [s for s in probe.get("streams", []) if s.get("codec_type") == "video"]
    if not streams:
        raise DecodeError("no video stream", "no_video_stream")
    num, _, den = streams[0].get("avg_frame_rate", "0/1").partition("/")
    fps = float(num) / float(den) if den and float(den) else 0.0
    n = _ffmpeg_count(path, size)
    idx = segment_centres(n, k)
    frames = _ffmpeg_pick(path, size, idx)
    stamps = [i / fps if fps else 0.0 for i in idx]
    return SampledFrames(frames, idx, stamps, n, fps, n / fps if fps else 0.0, "ffmpeg", n < k)


def _decord_message(e: Exception) -> str:
    """decord's first error line without its "[HH:MM:SS] file.cc:123: " prefix (shards stay deterministic)."""
    lines = str(e).strip().splitlines()
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", lines[0]) if lines else type(e).__name__


def _last_line(stderr: bytes | None) -> str:
    lines = (stderr or b"").decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "unknown error"


def sample_frames(path: str | Path, k: int = 5, size: int = 224) -> SampledFrames:
    """K frames at segment centres, resized to size x size RGB; raises DecodeError with the reason."""
    path = Path(os.path.abspath(path))  # never an option or a protocol for decord / ffmpeg
    try:
        path.stat()
    except OSError as e:  # not found, a name longer than the file system allows, no permission...
        raise DecodeError("file not found" if isinstance(e, FileNotFoundError) else (e.strerror or str(e)),
                          "missing") from None
    if path.is_dir():
        raise DecodeError("is a directory, not a video file", "missing")
    if path.is_file() and path.stat().st_size == 0:
        raise DecodeError("file is empty (0 bytes)", "empty")
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
