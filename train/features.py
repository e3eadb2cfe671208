"""Frozen-backbone feature cache for stages 1 and 2.

With the CNN frozen and no augmentation, a clip's pooled features are the same every epoch, so
they are computed once per split and reused: exactly equivalent to recomputing them. The cache is
keyed by a hash of the backbone weights, its input normalisation, the input size, the frame-features
entry with all its settings (``model.frames.fingerprint()``: model/frames.py), and the split's shard
checksums, and kept on disk under RUN/features/ so stage 2 reuses stage 1's.

Under torchrun the cache is built once, by all ranks together: each computes the features of its
contiguous share of the split and all_gather puts them back in split order on every rank (every
rank needs all of them: each epoch's permutation spans the whole split). Splitting beats "rank 0
builds, the others wait at a barrier" by the number of ranks, on the one pass that costs as much
as many cached epochs. Only rank 0 reads and writes the file, and hands a cache hit to the others,
so RUN/ need exist on rank 0's machine only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vidcap.atomic import write_atomic
from vidcap.model.base import VideoCaptioner
from vidcap.shards.layout import DataInfo
from vidcap.train.distributed import Dist

# (N, K, D) float32, or what a learned frame-features entry reads (model.features_from_cache turns it
# into features, in the step: model/frames.py ``cache``), or under trunk_blocks the clips' frames and
# the CNN trunk's maps ({"frames", "trunk"}: model/trunk.py)
Cached = torch.Tensor | dict[str, torch.Tensor]


def take(c: Cached, index) -> Cached:
    return {k: v[index] for k, v in c.items()} if isinstance(c, dict) else c[index]


def concat(parts: list[Cached]) -> Cached:
    if parts and isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def to_device(c: Cached, device: torch.device | str) -> Cached:
    return {k: v.to(device) for k, v in c.items()} if isinstance(c, dict) else c.to(device)


def n_cached(c: Cached) -> int:
    return len(next(iter(c.values()))) if isinstance(c, dict) else len(c)


def chunks(c: Cached, size: int) -> list[Cached]:
    return [take(c, slice(i, i + size)) for i in range(0, n_cached(c), size)]


@dataclass
class FeatureSet:
    clip_ids: list[str]
    feats: Cached
    captions: list[list[str]]
    attrs: torch.Tensor  # (N, A)


def _fingerprint(model: VideoCaptioner, info: DataInfo, split: str, image_size: int, max_clips: int | None) -> str:
    h = hashlib.sha256()
    for k, v in model.cached_cnn_state().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    manifest = info.build.manifest(split)
    used = [r.name for r in info.shards(split)]  # skip_bad_shards may leave some out
    pixels = [model.pixel_mean.flatten().tolist(), model.pixel_std.flatten().tolist()]  # the backbone's preprocessing
    trunk = [model.trunk_blocks] if model.trunk_blocks else []  # a cache of frames and trunk maps
    h.update(json.dumps([image_size, pixels, model.frames.fingerprint(), max_clips, *trunk,
                         [s["sha256"] for s in manifest["shards"]], used]).encode())
    return h.hexdigest()[:16]


def feature_cache_path(model: VideoCaptioner, info: DataInfo, split: str, image_size: int, max_clips: int | None,
                       cache_dir: Path) -> Path:
    """Where a split's features of this CNN, input and shards are cached (train probe reads it too)."""
    return Path(cache_dir) / f"{split}-{_fingerprint(model, info, split, image_size, max_clips)}.pt"


@torch.no_grad()
def compute_features(model: VideoCaptioner, batches: Iterable[dict], device: torch.device, desc: str,
                     progress: bool) -> FeatureSet:
    was_training = model.training
    model.eval()
    ids, feats, caps, attrs = [], [], [], []
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        cached = model.cacheable_features(batch["frames"].to(device))
        feats.append({k: v.cpu() for k, v in cached.items()} if isinstance(cached, dict) else cached.float().cpu())
        ids += batch["clip_id"]
        caps += batch["captions"]
        attrs.append(batch["attrs"])
    model.train(was_training)
    if not feats:  # a rank whose share is empty
        return FeatureSet([], torch.zeros(0), [], torch.zeros(0))
    return FeatureSet(ids, concat(feats), caps, torch.cat(attrs))


def _concat(parts: list[FeatureSet]) -> FeatureSet:
    parts = [p for p in parts if p.clip_ids]
    return FeatureSet([c for p in parts for c in p.clip_ids], concat([p.feats for p in parts]),
                      [c for p in parts for c in p.captions], torch.cat([p.attrs for p in parts]))


def cached_features(model: VideoCaptioner, info: DataInfo, split: str, image_size: int, cache_dir: Path,
                    batches_for: Callable[[int, int], Iterable[dict]], dist: Dist, max_clips: int | None,
                    progress: bool) -> FeatureSet:
    """This split's features from cache_dir, or computed -- `batches_for(rank, world)` gives a rank's
    share of the split, unshuffled -- and stored. Collective under torchrun (see the module docstring)."""
    path = feature_cache_path(model, info, split, image_size, max_clips, cache_dir)

    def load() -> FeatureSet | None:
        if not path.exists():
            return None
        try:
            d = torch.load(path, weights_only=True)
            return FeatureSet(d["clip_ids"], d["feats"], d["captions"], d["attrs"])
        except Exception:  # an unreadable cache file is recomputed, never trusted
            return None

    fs = dist.on_main(load)
    if fs is not None:
        return fs
    mine = compute_features(model, batches_for(dist.rank, dist.world), dist.device, f"features {split}", progress)
    fs = _concat(dist.gather(mine))
    if dist.is_main:
        state = {"clip_ids": fs.clip_ids, "feats": fs.feats, "captions": fs.captions, "attrs": fs.attrs}
        write_atomic(path, lambda f: torch.save(state, f))
    return fs


def feature_batches(fs: FeatureSet, batch_size: int, order: torch.Tensor | None = None, skip: int = 0):
    """Batches from a FeatureSet in `order` (default: stored order), shaped like the streamed ones;
    the first `skip` batches are left out (a resumed epoch)."""
    idx = order if order is not None else torch.arange(len(fs.clip_ids))
    for i in range(skip * batch_size, len(idx), batch_size):
        sel = idx[i : i + batch_size]
        yield {"clip_id": [fs.clip_ids[j] for j in sel], "feats": take(fs.feats, sel),
               "captions": [fs.captions[j] for j in sel], "attrs": fs.attrs[sel]}
