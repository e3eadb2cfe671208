"""The Python API: ``vidcap.load(DIR or CKPT)`` gives a :class:`Captioner` that captions a file, a
list of files, a folder, or frames already decoded -- the same captions as the ``caption`` command,
because the command (caption/cli.py) and ``caption serve`` (caption/serve.py) are thin layers over
this module::

    import vidcap

    with vidcap.load("models/a") as cap:       # a model folder (`train export`) or a checkpoint
        cap.caption("clip.mp4")                # 'a man is playing a guitar'
        cap.caption(["a.mp4", "b.mp4"])        # [Caption(path='a.mp4', text='...', ...), ...]
        cap.caption("videos/")                 # every video file of the folder, sorted
        cap.caption_frames(frames)             # (N, H, W, 3) uint8 RGB -> 'a ...'

Why files go through the pipeline's decoder and not a reader of the caller's choice: a caption
depends on which frames the model sees and how they were resized. Files are decoded by the one
frame sampler (pipeline.frames.sample_frames: K segment centres, resized in the decoder), in
decoder subprocesses with a timeout and a memory cap (pipeline.clip_worker), as the training data
were. Frames handed over as arrays go through the same rule -- the segment centres of the frames
given -- and frames of another size than the model's are resized (PIL, bicubic); the captions equal
the command's for the frames its decoder makes (tests/test_api.py).

One model call at a time (a lock): torch already spreads one batch over every core and two at once
only contend; decoding runs on ``workers`` processes beside it, started on first use and stopped by
:meth:`Captioner.close` (or the ``with`` block, or when the Captioner is garbage-collected).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vidcap.errors import UserError
from vidcap.flags import range_text
from vidcap.model import decoding
from vidcap.model.base import VideoCaptioner
from vidcap.model.folder import load_model
from vidcap.pipeline.clip_worker import ClipFailed, DecoderPool
from vidcap.pipeline.frames import segment_centres
from vidcap.tokens import decode

DEFAULT_TIMEOUT = 120.0
# What a folder contributes (a file named on the command line is tried whatever its name).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                            ".3gp", ".ogv", ".ts", ".mts", ".m2ts", ".gif"})
# (lowest, highest, lowest excluded, unit) of each setting: the API's ValueErrors and the command's flags.
LIMITS: dict[str, tuple[float, float, bool, str]] = {
    "beam": (1, 100, False, ""), "timeout": (0, 86400, True, "s"), "workers": (1, 64, False, ""),
    "batch": (1, 1024, False, "")}


class VideoError(UserError):
    """A video that cannot be captioned -- missing, empty, not a video, no frames, decoding past the
    timeout; ``reason`` is its category (pipeline.clip_worker's: ``missing``, ``empty``, ``timeout`` ...)."""

    def __init__(self, message: str, reason: str = "undecodable"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Caption:
    """One file's result. ``text`` is None and ``error`` says why when the file could not be used."""

    path: str
    text: str | None
    frame_times: list[float] = field(default_factory=list)  # the sampled frames' times, seconds
    error: str | None = None
    reason: str | None = None  # the error's category (VideoError.reason)

    @property
    def ok(self) -> bool:
        return self.error is None

    def row(self) -> dict:
        """The ``caption --jsonl`` row: {path, caption, frame_times, error}, in that order."""
        return {"path": self.path, "caption": self.text, "frame_times": list(self.frame_times), "error": self.error}


@dataclass(frozen=True)
class Frames:
    """A clip as the model sees it: (K, S, S, 3) uint8 RGB frames and their times in seconds."""

    frames: np.ndarray
    times: list[float]


def expand_inputs(paths: Sequence[str | os.PathLike], recursive: bool = False) -> list[str]:
    """The files to caption: each file as given; each folder's video files (by suffix; hidden files
    and folders skipped; subfolders with `recursive`), sorted. Duplicates once, first place kept."""
    out: list[str] = []
    for p in map(os.fspath, paths):
        if not os.path.isdir(p):
            out.append(p)
            continue
        found = []
        for root, dirs, files in os.walk(p):  # never follows symlinked folders: no cycles
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
            found += [os.path.join(root, f) for f in files
                      if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_SUFFIXES]
        out += sorted(found)
    unique: dict[str, str] = {}
    for p in out:
        unique.setdefault(os.path.normpath(p), p)
    return list(unique.values())


def check_settings(**settings: float) -> None:
    """A ValueError naming the first setting outside LIMITS (``beam=0: must be 1..100``)."""
    for key, value in settings.items():
        lo, hi, above, unit = LIMITS[key]
        whole = key in ("beam", "workers", "batch")  # counts: workers=1.5 failed at the first caption
        kinds = (int,) if whole else (int, float)
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ValueError(f"{key}={value!r}: must be {'an int' if whole else 'a number'}")
        if not ((lo < value <= hi) if above else (lo <= value <= hi)):
            raise ValueError(f"{key}={value:g}: {range_text(lo, hi, above=above, unit=unit)}")


class Captioner:
    """A loaded model and how it captions: beam size, and the decoders' timeout, count and batch.

    Build it with :func:`load`; ``Captioner(model, vocab)`` wraps a model you already hold."""

    def __init__(self, model: VideoCaptioner, vocab: Sequence[str], name: str = "model", source: str = "", *,
                 beam: int = 3, timeout: float = DEFAULT_TIMEOUT, workers: int = 2, batch: int = 8):
        check_settings(beam=beam, timeout=timeout, workers=workers, batch=batch)
        self.model = model.eval()
        self.vocab = list(vocab)
        self.name, self.source = name, source
        self.beam, self.timeout, self.workers, self.batch = beam, timeout, workers, batch
        self.device = next(model.parameters()).device
        self._model_lock = threading.Lock()
        self._pool: DecoderPool | None = None
        self._pool_lock = threading.Lock()

    # ---- what the model expects -----------------------------------------------------------------
    @property
    def architecture(self) -> str:
        return self.model.cfg.arch

    @property
    def n_frames(self) -> int:
        return self.model.cfg.n_frames

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    # ---- files ------------------------------------------------------------------------------------
    def caption(self, paths: str | os.PathLike | Iterable[str | os.PathLike], *, recursive: bool = False
                ) -> str | list[Caption]:
        """One file -> its caption (a VideoError if it cannot be used). A folder, or a list of files
        and folders -> one :class:`Caption` per video file, in the ``caption`` command's order; a file
        that cannot be used is a Caption with its error, and the others are still captioned."""
        if isinstance(paths, bytes):  # a bytes path is one path, not a list of ints
            paths = os.fsdecode(paths)
        if isinstance(paths, (str, os.PathLike)) and not os.path.isdir(paths):
            (one,) = self.captions([paths])
            if not one.ok:
                raise VideoError(f"{one.path}: {one.error}", one.reason or "undecodable")
            return one.text
        items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        return list(self.captions(expand_inputs(items, recursive)))

    def captions(self, files: Iterable[str | os.PathLike]) -> Iterator[Caption]:
        """One Caption per file, in order, each batch as soon as it is done (folders are not
        expanded here: :func:`expand_inputs`). Decoding runs ahead on the decoder processes while the
        model runs on a batch of ``batch`` clips."""
        files = [os.fspath(f) for f in files]
        pending: list[tuple[str, dict | ClipFailed]] = []

        def flush() -> Iterator[Caption]:
            good = [(p, r) for p, r in pending if not isinstance(r, ClipFailed)]
            texts = self._run([r["frames"] for _, r in good]) if good else []
            caps = dict(zip([p for p, _ in good], texts, strict=True))
            for p, r in pending:
                if isinstance(r, ClipFailed):
                    yield Caption(p, None, [], str(r), r.reason)
                else:
                    yield Caption(p, caps[p], [round(t, 3) for t in r["timestamps"]])
            pending.clear()

        for path, reply in self._decoders().imap(files, ahead=self.batch + self.workers):
            pending.append((path, reply))
            if sum(not isinstance(r, ClipFailed) for _, r in pending) >= self.batch:
                yield from flush()
        yield from flush()

    def decode(self, path: str | os.PathLike) -> Frames:
        """The clip's frames as the model sees them, decoded on a free decoder process (blocks while
        all are busy); a VideoError (without the path) when the file cannot be used."""
        try:
            reply = self._decoders().decode(os.fspath(path))
        except ClipFailed as e:
            raise VideoError(str(e), e.reason) from None
        return Frames(reply["frames"], list(reply["timestamps"]))

    # ---- frames -----------------------------------------------------------------------------------
    def caption_frames(self, frames: np.ndarray | Sequence[np.ndarray]) -> str | list[str]:
        """One clip's decoded frames, an (N, H, W, 3) uint8 RGB array, -> its caption; a list of such
        arrays (or a (B, N, H, W, 3) array) -> their captions. The model's K frames are the segment centres of the N given (the
        pipeline's rule, so a whole decoded clip works); frames not K x S x S are resized to the
        model's size S (PIL bicubic)."""
        if isinstance(frames, np.ndarray) and frames.ndim != 5:  # one clip (a 5-D array is B clips)
            return self._run([self.prepare(frames)])[0]
        clips = [self.prepare(f) for f in frames]
        out: list[str] = []
        for i in range(0, len(clips), self.batch):
            out += self._run(clips[i:i + self.batch])
        return out

    def prepare(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> the model's (K, S, S, 3): segment centres of N, resized to S x S."""
        a = np.asarray(frames)
        if a.ndim != 4 or min(a.shape[:3], default=0) < 1 or a.shape[-1] != 3 or a.dtype != np.uint8:  # no pixels: A-96
            raise ValueError(f"frames: expected an (N, H, W, 3) uint8 RGB array, got {a.dtype} of shape {a.shape}")
        k, s = self.n_frames, self.image_size
        if a.shape[0] != k:
            a = a[segment_centres(a.shape[0], k)]
        if a.shape[1:3] != (s, s):
            from PIL import Image

            a = np.stack([np.asarray(Image.fromarray(f).resize((s, s), Image.BICUBIC)) for f in a])
        return np.ascontiguousarray(a)

    @torch.no_grad()
    def _run(self, clips: list[np.ndarray]) -> list[str]:
        """Captions of B prepared clips: one CNN call over B x K frames, one batched decode."""
        x = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).to(self.device)  # (B, K, 3, S, S)
        with self._model_lock:
            feats = self.model.frame_features(x)
            seqs = decoding.decode(self.model, feats, self.beam)
        return [decode(s, self.vocab) for s in seqs.tolist()]

    # ---- the decoder processes --------------------------------------------------------------------
    def _decoders(self) -> DecoderPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = DecoderPool(self.workers, self.n_frames, self.image_size, None, self.timeout)
                weakref.finalize(self, self._pool.close)  # children go with the Captioner
            return self._pool

    def close(self) -> None:
        """Stop the decoder processes (a later call starts new ones)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> Captioner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Captioner({self.name!r}, architecture={self.architecture!r}, frames={self.n_frames}, "
                f"size={self.image_size}, beam={self.beam})")


def load(path: str | os.PathLike, *, beam: int = 3, timeout: float = DEFAULT_TIMEOUT, workers: int = 2,
         batch: int = 8, device: str | torch.device = "cpu") -> Captioner:
    """The model of a model folder (a directory, from ``train export``) or a checkpoint (a file, e.g.
    ``RUN/stage3/best.pt``). Loading a folder executes nothing (model/folder.py); a bad one is a
    CheckpointError naming the file."""
    p = Path(path)
    return load_from(None if p.is_dir() else p, p if p.is_dir() else None, beam=beam, timeout=timeout,
                     workers=workers, batch=batch, device=device)


def load_from(ckpt: str | os.PathLike | None, model_dir: str | os.PathLike | None, *, beam: int = 3,
              timeout: float = DEFAULT_TIMEOUT, workers: int = 2, batch: int = 8,
              device: str | torch.device = "cpu") -> Captioner:
    """:func:`load` for the commands' ``--ckpt FILE | --model DIR`` (exactly one of them)."""
    check_settings(beam=beam, timeout=timeout, workers=workers, batch=batch)
    model, raw = load_model(ckpt, model_dir, map_location=device)
    return Captioner(model, raw["vocab"], raw["name"], raw["source"], beam=beam, timeout=timeout,
                     workers=workers, batch=batch)


def caption_rows(paths: list[str], model: VideoCaptioner, itos: list[str], beam: int = 3,
                 timeout: float = DEFAULT_TIMEOUT, workers: int = 2, batch: int = 8) -> Iterator[dict]:
    """The ``caption --jsonl`` rows of `paths` with a model already loaded (the function form of
    :meth:`Captioner.captions`; its decoders stop when the rows are done)."""
    with Captioner(model, itos, beam=beam, timeout=timeout, workers=workers, batch=batch) as cap:
        for c in cap.captions(paths):
            yield c.row()
