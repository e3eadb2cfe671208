"""Which input carries a nuisance's error? (issue 20: find out why the cues break before changing them)

A focus-pooling S2VT with frame differences (the cpu-small design) reads a clip three ways: the
saliency map that focus pooling weighs the fine CNN maps by, the appearance features (grid + focus)
through img_fc, and their frame-to-frame differences through motion_fc. For each nuisance this
applies it to the test clips' frames and then routes the perturbed frames into one of those inputs
only, the others seeing the clean frames:

  clean            nothing perturbed
  all              the perturbed frames everywhere (what a user sees)
  saliency only    the CNN reads clean frames; focus pooling weighs them by the perturbed clip's saliency
  cnn only         the CNN reads perturbed frames; the saliency is the clean clip's
  appearance only  img_fc reads the perturbed features, motion_fc the clean features' differences
  motion only      img_fc reads the clean features, motion_fc the perturbed features' differences

and reports the action / colour / shape accuracies of the greedy captions.

Usage: python bench/diagnose_nuisances.py --model demo/model --data demo/data [--max-clips 120]
       [--nuisances flicker,noise,shake,pan] [--out bench/diagnose_nuisances_report.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidcap.evalkit.grounding import slot_accuracy  # noqa: E402
from vidcap.model import decoding  # noqa: E402
from vidcap.model.folder import load_model  # noqa: E402
from vidcap.pipeline.nuisances import NUISANCES, perturb  # noqa: E402
from vidcap.shards.layout import DataInfo  # noqa: E402
from vidcap.tokens import decode  # noqa: E402
from vidcap.train.robustness import _condition_seed, _load_clips  # noqa: E402

ROUTES = ("clean", "all", "saliency only", "cnn only", "appearance only", "motion only")


def _tensor(frames: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames)).permute(0, 1, 4, 2, 3)


def _features(model, cnn_in: torch.Tensor, saliency_in: torch.Tensor) -> torch.Tensor:
    """frame_features of `cnn_in` with focus pooling weighed by the saliency of `saliency_in`."""
    entry = model.frames  # the focus entry (model/focus.py)
    pixels = saliency_in.float() if saliency_in.dtype == torch.uint8 else saliency_in.float() * 255
    frames_s, valid_s = entry.compensate(pixels)
    sal = entry.saliency(frames_s, valid_s)
    entry.saliency = lambda frames, valid, deviation=None: sal  # an instance attribute shadows the method ...
    try:
        return model.frame_features(cnn_in)
    finally:
        del entry.saliency  # ... until deleted


def _decode_mixed(model, appearance: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """Greedy captions with img_fc reading `appearance` and motion_fc the differences of `motion`."""
    def encode(feats, steps):
        b = feats.shape[0]
        v = model.img_fc(model._normed(appearance))
        diff = torch.cat([torch.zeros_like(motion[:, :1]), motion[:, 1:] - motion[:, :-1]], 1)
        v = v + model.motion_fc(diff / model.diff_std if model.cfg.feature_norm else diff)
        zeros_word = v.new_zeros(b, v.shape[1], model.cfg.embed)
        pad = v.new_zeros(b, steps, model.cfg.embed)
        h1, _ = model.lstm1(torch.cat([v, pad], 1))
        _, state2 = model.lstm2(torch.cat([h1[:, : v.shape[1]], zeros_word], 2))
        return h1[:, v.shape[1]:], state2

    model.encode = encode
    try:
        return decoding.greedy(model, appearance)
    finally:
        del model.encode


@torch.no_grad()
def run(model_dir: str, data: str, nuisances: list[str], max_clips: int, seed: int) -> dict:
    model, raw = load_model(None, model_dir)
    model.eval()
    info = DataInfo.load(data)
    clips = _load_clips(info, "test", max_clips, model.cfg.image_size)
    objects = {c["clip_id"]: c["objects"] for c in clips}
    ids = [c["clip_id"] for c in clips]
    report: dict = {"model": model_dir, "data": data, "clips": len(clips), "nuisances": {}}
    for name in nuisances:
        value = NUISANCES[name].standard
        rows = {}
        preds: dict[str, list[str]] = {r: [] for r in ROUTES}
        for i in range(0, len(clips), 16):
            batch = clips[i : i + 16]
            clean = _tensor([c["frames"] for c in batch])
            noisy = _tensor([perturb(c["frames"], name, value, _condition_seed(seed, c["clip_id"], name, 1))
                             for c in batch])
            f_clean, f_noisy = model.frame_features(clean), model.frame_features(noisy)
            seqs = {
                "clean": decoding.greedy(model, f_clean),
                "all": decoding.greedy(model, f_noisy),
                "saliency only": decoding.greedy(model, _features(model, clean, noisy)),
                "cnn only": decoding.greedy(model, _features(model, noisy, clean)),
            }
            if getattr(model, "motion_fc", None) is not None:
                seqs["appearance only"] = _decode_mixed(model, f_noisy, f_clean)
                seqs["motion only"] = _decode_mixed(model, f_clean, f_noisy)
            for r, s in seqs.items():
                preds[r] += [decode(x, raw["vocab"]) for x in s.tolist()]
        for r, p in preds.items():
            if p:
                acc = slot_accuracy(dict(zip(ids, p, strict=True)), objects)
                rows[r] = {k: round(100 * acc[k], 1) for k in ("action_acc", "colour_acc", "shape_acc")}
        report["nuisances"][name] = {"value": value, "routes": rows}
        print(name, value, json.dumps(rows), flush=True)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--max-clips", type=int, default=120)
    ap.add_argument("--nuisances", default="flicker,noise,shake,pan,gain_drift")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "diagnose_nuisances_report.json"))
    a = ap.parse_args()
    report = run(a.model, a.data, a.nuisances.split(","), a.max_clips, a.seed)
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"written: {a.out}")


if __name__ == "__main__":
    main()
