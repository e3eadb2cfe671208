"""Where does `model.stabilize=similarity` measure the camera, and where does it leave a frame alone?
(issue 20: shake and pan hurt stage 3 more than they hurt the clean-world model.)

For each test clip of a build, `train robustness`'s own perturbation (the same seeds) moves the
camera -- pan, shake or zoom at standard strength -- and `model.camera.camera_motion` measures it.
The clip's own camera motion (the realistic world has some) is measured on the unperturbed clip and
subtracted, so what is compared with the perturbation's known shift is what the perturbation added.
Reported per background kind of the realistic world (gradient, photo, clutter) and per share of
agreeing blocks the stabiliser asks for (``model.stabilize_share``): the share of frames it left alone
(too few of its blocks agreed on a motion), the error of the added shift in pixels over all frames
and over the frames it did correct. A frame left alone reaches the model with the camera's motion in
it. With ``--static`` (a clean-world build: a camera at rest), the share of frames the stabiliser
moves by more than a pixel -- the object taken for the camera, the lock-on a low share risks.

Usage: python bench/stabilizer_coverage.py --data demo/data [--static demo/clean-data] [--shares 0.5,0.24]
       [--clips 120] [--split test] [--out bench/stabilizer_coverage_report.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidcap.model import camera  # noqa: E402
from vidcap.pipeline.nuisances import NUISANCES, perturb, sampled_times  # noqa: E402
from vidcap.shards.layout import DataInfo  # noqa: E402
from vidcap.shards.reader import checked_samples  # noqa: E402
from vidcap.train.data import SplitStream, decode_jpeg  # noqa: E402
from vidcap.train.robustness import _condition_seed  # noqa: E402

STANDARD = 1  # the strength index `train robustness --strengths standard` uses


def true_offsets(name: str, strength: float, seed: int, k: int, width: int) -> np.ndarray:
    """The camera offsets (K, 2) in pixels that pipeline.nuisances draws for this seed (zoom: none)."""
    n = NUISANCES[name]
    return n.camera(n.draw(strength, np.random.default_rng(seed), None), sampled_times(k))[0] * width


def motion(frames: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    shift, scale = camera.camera_motion(torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float(), share)
    return shift[0].numpy(), scale[0].numpy()


def load_clips(data: str, split: str, n: int, size: int) -> list[tuple[str, str, np.ndarray]]:
    """(clip id, background kind, frames (K, H, W, 3) uint8) of the first `n` clips of a split."""
    info = DataInfo.load(data)
    clips = []
    for s in checked_samples(SplitStream(info, split).slices, info.build.store, info.expect):
        meta = s["json"]
        kind = str((meta.get("nuisances") or {}).get("background", "gradient")).split(":")[0]
        clips.append((meta["clip_id"], kind, np.stack([decode_jpeg(j, size).transpose(1, 2, 0) for j in s["frames"]])))
        if len(clips) >= n:
            break
    return clips


def _row(err: np.ndarray, alone: np.ndarray) -> dict:
    fixed = err[~alone]
    return {"frames": len(err), "left_alone": round(float(alone.mean()), 3),
            "error_px_median": round(float(np.median(err)), 2),
            "error_px_over_2": round(float(np.mean(err > 2)), 3),
            "corrected_error_px_over_2": round(float(np.mean(fixed > 2)), 3) if len(fixed) else None}


def coverage(clips: list, share: float, seed: int) -> dict:
    """Per camera nuisance and background: frames left alone, and the error of the added shift."""
    out = {}
    for name in ("pan", "shake", "zoom"):
        strength = NUISANCES[name].strengths[STANDARD]
        left, errors = defaultdict(list), defaultdict(list)
        for clip_id, kind, frames in clips:
            cseed = _condition_seed(seed, clip_id, name, STANDARD)
            moved = perturb(frames, name, strength, cseed)
            off = true_offsets(name, strength, cseed, len(frames), frames.shape[2])
            # warp() samples the scene at centre + offset: the scene moves by -offset in the frame
            added = -(off - off[len(frames) // 2])
            shift, scale = motion(moved, share)
            base, _ = motion(frames, share)
            for i in range(len(frames)):
                if i == len(frames) // 2:
                    continue
                for key in (kind, "all"):
                    left[key].append(bool(np.allclose(shift[i], 0) and scale[i] == 1))
                    errors[key].append(float(np.hypot(*(shift[i] - base[i] - added[i]))))
        out[name] = {"strength": strength,
                     "by_background": {k: _row(np.array(errors[k]), np.array(left[k])) for k in sorted(left)}}
    return out


def static_moves(clips: list, share: float) -> dict:
    """A camera at rest: the share of frames moved by more than 1 px (the object taken for the camera)."""
    moved = []
    for _, _, frames in clips:
        shift, scale = motion(frames, share)
        moved += [bool(np.hypot(*shift[i]) > 1 or abs(scale[i] - 1) > 0.01) for i in range(len(frames)) if i != len(frames) // 2]
    return {"frames": len(moved), "moved_over_1px": round(float(np.mean(moved)), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description="where the stabiliser measures the camera, per background")
    p.add_argument("--data", required=True, help="pipeline build output (the realistic built-in world)")
    p.add_argument("--split", default="test")
    p.add_argument("--static", help="a clean-world build (camera at rest): how often the stabiliser moves it")
    p.add_argument("--shares", default=f"{camera.MIN_SHARE},0.24", help="comma-separated model.stabilize_share values")
    p.add_argument("--clips", type=int, default=120)
    p.add_argument("--size", type=int, default=160, help="frame side the model reads (cpu-small: 160)")
    p.add_argument("--seed", type=int, default=0, help="`train robustness --seed`")
    p.add_argument("--out", default=str(REPO / "bench" / "stabilizer_coverage_report.json"))
    a = p.parse_args()
    shares = [float(x) for x in a.shares.split(",")]
    clips = load_clips(a.data, a.split, a.clips, a.size)
    report = {"data": a.data, "split": a.split, "clips": len(clips), "shares": {}}
    still = load_clips(a.static, a.split, a.clips, a.size) if a.static else []
    for share in shares:
        entry = report["shares"][str(share)] = {"nuisances": coverage(clips, share, a.seed)}
        for name, r in entry["nuisances"].items():
            print(f"share {share} {name}", json.dumps(r["by_background"]), flush=True)
        if still:
            entry["static"] = {"data": a.static, **static_moves(still, share)}
            print(f"share {share} static camera", json.dumps(entry["static"]), flush=True)
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
