"""`caption PATH... --model DIR | --ckpt CKPT [--out caps.jsonl]`: one caption per video file, for
files and folders of them; `caption serve` is the HTTP service (caption/serve.py).

Frames are sampled by the pipeline's own routine (pipeline.frames.sample_frames), so training and
inference see the same frames, in the pipeline's decoder subprocesses (pipeline.clip_worker) with
their per-file timeout and memory cap: a FIFO, a stalled mount or a runaway decode is killed after
``--timeout`` seconds and becomes that file's error, never the end of the run.

Throughput: ``--workers`` decoder processes decode the next clips while the model runs on the
current batch (decoding is the slow half on a CPU), and the CNN and the decoder see ``--batch``
clips at once (one CNN call of batch x frames images instead of one per clip).

``--out FILE`` appends one JSON row per input file -- ``path``, ``caption``, ``frame_times`` (the
sampled frames' times in seconds) and ``error`` (null, or why this file has no caption) -- each row
one write (vidcap.atomic.LineAppender), so a killed run loses no finished row and a re-run skips
the paths already in FILE. Without ``--out``: ``PATH: caption`` lines on stdout, errors on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vidcap.atomic import LineAppender
from vidcap.errors import ArgumentParser, UserError, cli_errors
from vidcap.model import decoding
from vidcap.model.base import VideoCaptioner
from vidcap.model.checkpoint import CheckpointError
from vidcap.model.folder import load_model
from vidcap.pipeline.clip_worker import ClipFailed, DecoderPool
from vidcap.tokens import decode

DEFAULT_TIMEOUT = 120.0
# What a folder contributes (a file named on the command line is tried whatever its name).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                            ".3gp", ".ogv", ".ts", ".mts", ".m2ts", ".gif"})


def expand_inputs(paths: list[str], recursive: bool = False) -> list[str]:
    """The files to caption: each file as given; each folder's video files (by suffix; hidden files
    and folders skipped; subfolders with `recursive`), sorted. Duplicates once, first place kept."""
    out: list[str] = []
    for p in paths:
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


@torch.no_grad()
def caption_frames(model: VideoCaptioner, clips: list[np.ndarray], itos: list[str], beam: int = 3) -> list[str]:
    """Captions of B clips of sampled frames ((K, H, W, 3) uint8 each): one CNN call, one batched decode."""
    x = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3)  # (B, K, 3, H, W)
    feats = model.frame_features(x)
    seqs = decoding.decode(model, feats, beam)
    return [decode(s, itos) for s in seqs.tolist()]


def caption_rows(paths: list[str], model: VideoCaptioner, itos: list[str], beam: int = 3,
                 timeout: float = DEFAULT_TIMEOUT, workers: int = 2, batch: int = 8) -> Iterator[dict]:
    """One row per path, in order: {path, caption, frame_times, error}. A file that cannot be
    decoded is a row with its error; decoding runs ahead on `workers` processes meanwhile."""
    pending: list[tuple[str, dict | ClipFailed]] = []

    def flush() -> Iterator[dict]:
        good = [(p, r) for p, r in pending if not isinstance(r, ClipFailed)]
        caps = dict(zip([p for p, _ in good], caption_frames(model, [r["frames"] for _, r in good], itos, beam)
                        if good else [], strict=True))
        for p, r in pending:
            if isinstance(r, ClipFailed):
                yield {"path": p, "caption": None, "frame_times": [], "error": str(r)}
            else:
                yield {"path": p, "caption": caps[p], "frame_times": [round(t, 3) for t in r["timestamps"]],
                       "error": None}
        pending.clear()

    with DecoderPool(workers, model.cfg.n_frames, model.cfg.image_size, None, timeout) as pool:
        for path, reply in pool.imap(paths, ahead=batch + workers):
            pending.append((path, reply))
            if sum(not isinstance(r, ClipFailed) for _, r in pending) >= batch:
                yield from flush()
        yield from flush()


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="caption", description="caption video files and folders with a vidcap model; "
                       "`caption serve --help` for the HTTP service",
                       epilog="Exit status: 0 every file captioned, 1 some could not be decoded, 2 a user error.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="video files (anything ffmpeg/decord reads) and folders "
                   f"(their {', '.join(sorted(VIDEO_SUFFIXES))} files)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="model folder (from `train export`)")
    which.add_argument("--ckpt", help="checkpoint (e.g. RUN/stage3/best.pt)")
    p.add_argument("--out", help="append one JSON row per file here (path, caption, frame_times, error); "
                   "a re-run skips the paths already in it")
    p.add_argument("--recursive", action="store_true", help="look for videos in subfolders too")
    p.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy; default 3)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds to decode one file before giving up on it (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--workers", type=int, default=2, help="decoder processes (default 2)")
    p.add_argument("--batch", type=int, default=8, help="clips per CNN/decoder batch (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (shown with --out)")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # a file named "serve" is ./serve
        from vidcap.caption.serve import main as serve_main

        return serve_main(argv[1:])
    with cli_errors("caption", also=(CheckpointError,)):
        a = parser().parse_args(argv)
        if not (1 <= a.beam <= 100 and 0 < a.timeout <= 86400 and 1 <= a.workers <= 64 and 1 <= a.batch <= 1024):
            raise UserError(f"--beam {a.beam} / --timeout {a.timeout:g} / --workers {a.workers} / --batch {a.batch}: "
                            "must be 1..100 / > 0 and <= 86400 (s) / 1..64 / 1..1024")
        paths = expand_inputs(a.paths, a.recursive)
        if not paths:
            raise UserError(f"{', '.join(a.paths)}: no video files ({'' if a.recursive else 'try --recursive; '}"
                            f"suffixes: {', '.join(sorted(VIDEO_SUFFIXES))})")
        out = LineAppender(a.out) if a.out else None
        done = {os.path.normpath(r["path"]) for r in (out.rows if out else [])
                if isinstance(r, dict) and isinstance(r.get("path"), str)}
        todo = [p for p in paths if os.path.normpath(p) not in done]
        model, raw = load_model(a.ckpt, a.model)
    failed = 0
    bar = tqdm(total=len(todo), unit="clip", desc="caption", disable=out is None or a.quiet or not todo)
    try:
        with cli_errors("caption"):  # a full disk under --out: one line, the rows so far kept
            for row in caption_rows(todo, model, raw["vocab"], a.beam, a.timeout, a.workers, a.batch):
                failed += row["error"] is not None
                bar.update(1)
                if out is not None:
                    out.write(row)
                elif row["error"] is None:
                    print(f"{row['path']}: {row['caption']}", flush=True)
                else:
                    print(f"caption: error: {row['path']}: {row['error']}", file=sys.stderr, flush=True)
    finally:
        bar.close()
        if out is not None:
            out.close()
    if out is not None:
        print(f"{len(todo) - failed} captioned, {failed} failed, {len(paths) - len(todo)} already in {a.out}; "
              f"rows in {a.out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
