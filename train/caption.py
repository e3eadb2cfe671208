"""`caption VIDEO... --ckpt CKPT`: one caption per raw video file, sampling frames with the
pipeline's own routine (pipeline.frames.sample_frames) so train and inference see the same frames.

Frames are decoded by the pipeline's decoder subprocess (pipeline.clip_worker.ClipDecoder), with its
per-file timeout and memory cap: a FIFO, a stalled network mount or a runaway decode is killed after
``--timeout`` seconds and reported for that file, and the other files are still captioned.
"""

from __future__ import annotations

import argparse
import sys

import torch

from evalkit.errors import ArgumentParser, UserError, cli_errors
from model.checkpoint import CheckpointError, load_checkpoint
from pipeline.clip_worker import ClipDecoder, ClipFailed
from pipeline.vocab import decode

DEFAULT_TIMEOUT = 120.0


@torch.no_grad()
def caption_files(paths: list[str], ckpt: str, beam: int = 3, timeout: float = DEFAULT_TIMEOUT
                  ) -> dict[str, str | ClipFailed]:
    """{path: caption}, or {path: ClipFailed} for a file that cannot be decoded in time. Loads the model once."""
    model, raw = load_checkpoint(ckpt)
    out: dict[str, str | ClipFailed] = {}
    with ClipDecoder(model.cfg.n_frames, model.cfg.image_size, None, timeout) as decoder:
        for p in paths:
            try:
                frames = decoder.decode(p)["frames"]
            except ClipFailed as e:
                out[p] = e
                continue
            feats = model.frame_features(torch.from_numpy(frames).permute(0, 3, 1, 2)[None])
            seq = model.greedy(feats) if beam <= 1 else model.beam(feats, beam)
            out[p] = decode(seq[0].tolist(), raw["vocab"])
    return out


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="caption", description="caption raw video files with a vidcap checkpoint")
    p.add_argument("videos", nargs="+", help="video files (anything ffmpeg/decord can read)")
    p.add_argument("--ckpt", required=True, help="checkpoint (e.g. RUN/stage3/best.pt)")
    p.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy; default 3)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds to decode one file before giving up on it (default {DEFAULT_TIMEOUT:g})")
    return p


def main(argv: list[str] | None = None) -> None:
    """Exit 0 when every file is captioned, 1 when some could not be decoded (one line each on
    stderr, the others captioned), 2 on a user error (bad checkpoint, bad argument)."""
    with cli_errors("caption", also=(CheckpointError,)):
        a = parser().parse_args(argv)
        if not (1 <= a.beam <= 100 and 0 < a.timeout <= 86400):
            raise UserError(f"--beam {a.beam} / --timeout {a.timeout:g}: must be 1..100 / > 0 and <= 86400 (s)")
        results = caption_files(a.videos, a.ckpt, a.beam, a.timeout)
    for path, r in results.items():
        if isinstance(r, ClipFailed):
            print(f"caption: error: {path}: {r}", file=sys.stderr)
        else:
            print(f"{path}: {r}")
    sys.exit(1 if any(isinstance(r, ClipFailed) for r in results.values()) else 0)


if __name__ == "__main__":
    main()
