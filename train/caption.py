"""`caption VIDEO... --ckpt CKPT`: one caption per raw video file, sampling frames with the
pipeline's own routine (pipeline.frames.sample_frames) so train and inference see the same frames."""

from __future__ import annotations

import argparse
import sys

import torch

from model.checkpoint import load_checkpoint
from pipeline.frames import DecodeError, sample_frames
from pipeline.vocab import decode


@torch.no_grad()
def caption_files(paths: list[str], ckpt: str, beam: int = 3) -> dict[str, str | DecodeError]:
    """{path: caption}, or {path: DecodeError} for a file that cannot be decoded. Loads the model once."""
    model, raw = load_checkpoint(ckpt)
    out: dict[str, str | DecodeError] = {}
    for p in paths:
        try:
            s = sample_frames(p, model.cfg.n_frames, model.cfg.image_size)
        except DecodeError as e:
            out[p] = e
            continue
        feats = model.frame_features(torch.from_numpy(s.frames).permute(0, 3, 1, 2)[None])
        seq = model.greedy(feats) if beam <= 1 else model.beam(feats, beam)
        out[p] = decode(seq[0].tolist(), raw["vocab"])
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="caption", description="caption raw video files with a vidcap checkpoint")
    p.add_argument("videos", nargs="+", help="video files (anything ffmpeg/decord can read)")
    p.add_argument("--ckpt", required=True, help="checkpoint (e.g. RUN/stage3/best.pt)")
    p.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy; default 3)")
    a = p.parse_args(argv)
    try:
        results = caption_files(a.videos, a.ckpt, a.beam)
    except FileNotFoundError as e:
        print(f"caption: error: {e}", file=sys.stderr)
        sys.exit(2)
    for path, r in results.items():
        if isinstance(r, DecodeError):
            print(f"caption: error: {path}: {r}", file=sys.stderr)
        else:
            print(f"{path}: {r}")
    sys.exit(1 if any(isinstance(r, DecodeError) for r in results.values()) else 0)


if __name__ == "__main__":
    main()
