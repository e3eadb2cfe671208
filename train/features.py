"""Frozen-backbone feature cache for stages 1 and 2.

With the CNN frozen and no augmentation, a clip's pooled features are the same every epoch, so
they are computed once per split and reused: exactly equivalent to recomputing them. The cache is
keyed by a hash of the backbone weights, its input normalisation, the input size and the split's
shard checksums, and kept on disk under RUN/features/ so stage 2 reuses stage 1's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from evalkit.atomic import write_atomic
from model.base import VideoCaptioner
from pipeline.shards import load_manifest
from train.data import DataInfo


@dataclass
class FeatureSet:
    clip_ids: list[str]
    feats: torch.Tensor  # (N, K, D) float32
    captions: list[list[str]]
    attrs: torch.Tensor  # (N, A)


def _fingerprint(model: VideoCaptioner, info: DataInfo, split: str, image_size: int, max_clips: int | None) -> str:
    h = hashlib.sha256()
    for k, v in model.backbone.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    manifest = load_manifest(info.root / "shards", split)
    used = [Path(u).name for u in info.urls(split)]  # skip_bad_shards may leave some out
    pixels = [model.pixel_mean.flatten().tolist(), model.pixel_std.flatten().tolist()]  # the backbone's preprocessing
    h.update(json.dumps([image_size, pixels, max_clips, [s["sha256"] for s in manifest["shards"]], used]).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def compute_features(model: VideoCaptioner, batches, device: torch.device, desc: str, progress: bool) -> FeatureSet:
    was_training = model.training
    model.eval()
    ids, feats, caps, attrs = [], [], [], []
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        feats.append(model.frame_features(batch["frames"].to(device)).float().cpu())
        ids += batch["clip_id"]
        caps += batch["captions"]
        attrs.append(batch["attrs"])
    model.train(was_training)
    return FeatureSet(ids, torch.cat(feats), caps, torch.cat(attrs))


def cached_features(model: VideoCaptioner, info: DataInfo, split: str, image_size: int, cache_dir: Path,
                    make_batches, device: torch.device, max_clips: int | None, progress: bool) -> FeatureSet:
    """Load this split's features from cache_dir, or compute (via make_batches()) and store them."""
    path = Path(cache_dir) / f"{split}-{_fingerprint(model, info, split, image_size, max_clips)}.pt"
    if path.exists():
        try:
            d = torch.load(path, weights_only=True)
            return FeatureSet(d["clip_ids"], d["feats"], d["captions"], d["attrs"])
        except Exception:  # an unreadable cache file is recomputed, never trusted
            pass
    fs = compute_features(model, make_batches(), device, f"features {split}", progress)
    state = {"clip_ids": fs.clip_ids, "feats": fs.feats, "captions": fs.captions, "attrs": fs.attrs}
    write_atomic(path, lambda f: torch.save(state, f))
    return fs


def feature_batches(fs: FeatureSet, batch_size: int, order: torch.Tensor | None = None):
    """Batches from a FeatureSet in `order` (default: stored order), shaped like the streamed ones."""
    idx = order if order is not None else torch.arange(len(fs.clip_ids))
    for i in range(0, len(idx), batch_size):
        sel = idx[i : i + batch_size]
        yield {"clip_id": [fs.clip_ids[j] for j in sel], "feats": fs.feats[sel],
               "captions": [fs.captions[j] for j in sel], "attrs": fs.attrs[sel]}
