"""`train probe` reads a split's features from the run's feature cache when the cache holds the
checkpoint's CNN (stage 2 keeps stage 1's frozen CNN), and gets the same probe accuracies as
computing them; a cache of another CNN is never used."""

from __future__ import annotations

import torch

from vidcap.model.checkpoint import load_checkpoint
from vidcap.shards.layout import DataInfo
from vidcap.train.probe import cached_split_features, probe_checkpoint, split_features


def test_the_probe_reads_the_runs_feature_cache_and_gets_the_same_numbers(tiny_model, built_small):
    ckpt, features_dir = tiny_model["ckpt"], tiny_model["run"] / "features"
    model, _ = load_checkpoint(ckpt)
    info = DataInfo.load(built_small)
    cached = cached_split_features(model, info, "train", features_dir)
    assert cached is not None, f"no train features cached in {features_dir}"
    feats, objects = split_features(model, info, "train")  # both in the split's order
    assert cached[1] == objects and torch.allclose(cached[0], feats, atol=1e-5)
    computed = probe_checkpoint(str(ckpt), str(built_small), "val", features_dir=None)
    assert probe_checkpoint(str(ckpt), str(built_small), "val") == computed  # "auto": RUN/features/


def test_a_cache_of_another_cnn_is_not_read(tiny_model, built_small):
    model, _ = load_checkpoint(tiny_model["ckpt"])
    with torch.no_grad():
        next(model.backbone.parameters()).mul_(1.01)  # a CNN trained on (stage 3): another key
    assert cached_split_features(model, DataInfo.load(built_small), "train", tiny_model["run"] / "features") is None
