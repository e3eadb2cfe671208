"""The learned where-to-look (``model.features=attend``, model/attend.py): what the cache keeps gives
the same features as the direct call, the attention starts as the global average and can learn to
pick the subject out where the average cannot, and a stage-1 run trains it from the cached maps."""

from __future__ import annotations

import torch

from vidcap.model import create_model, load_checkpoint, make_config
from vidcap.model.attend import Attend, AttendConfig
from vidcap.train.config import make_train_config
from vidcap.train.loop import run_stage


def test_cache_then_from_cache_is_the_direct_call_and_starts_as_the_average():
    torch.manual_seed(0)
    m = create_model(make_config("tiny", 12, features="attend", **{"attend.heads": 2, "attend.scene": True,
                                                                    "attend.where": False})).eval()
    x = torch.randint(0, 255, (2, 5, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        cached = m.cacheable_features(x)
        feats = m.features_from_cache(cached)
        torch.testing.assert_close(feats, m.frame_features(x))
    c = m.frames.channels
    assert cached.shape[2] == c + 1 and feats.shape == (2, 5, 3 * c)  # two heads and the scene
    average = cached[:, :, :c].mean((-2, -1))
    for block in range(3):  # zero-initialised scores: every head is the global average at first
        torch.testing.assert_close(feats[..., block * c : (block + 1) * c], average)


def test_the_attention_learns_to_read_the_subject_where_the_average_cannot():
    """Maps of 6x6 cells of noise; one cell, marked in the motion channel, holds the subject's class
    vector, another (unmarked) a distractor's. A linear readout of the global average reads the
    subject's class no better than chance among 4; trained with the attention, it reads it."""
    g = torch.Generator().manual_seed(0)
    n, c = 512, 16
    protos = torch.randn(4, c, generator=g) * 3
    labels, other = torch.randint(0, 4, (n,), generator=g), torch.randint(0, 4, (n,), generator=g)
    maps = torch.randn(n, 1, c + 1, 6, 6, generator=g) * 0.5
    maps[:, :, c] = 0
    cells = torch.randperm(36, generator=g)[:2].tolist()
    for i in range(n):
        s, d = torch.randperm(36, generator=g)[:2].tolist()
        maps[i, 0, :c, s // 6, s % 6] += protos[labels[i]]
        maps[i, 0, :c, d // 6, d % 6] += protos[other[i]]
        maps[i, 0, c, s // 6, s % 6] = 1.0  # where it moves
    del cells

    def trained(use_attention: bool) -> float:
        torch.manual_seed(0)
        entry = Attend(AttendConfig(heads=1, motion=True, where=False), torch.nn.Identity(), c)
        entry.channels = c
        head = torch.nn.Linear(c, 4)
        params = list(head.parameters()) + (list(entry.parameters()) if use_attention else [])
        opt = torch.optim.Adam(params, lr=1e-2)
        for _ in range(150):
            loss = torch.nn.functional.cross_entropy(head(entry.from_cache(maps[:384])[:, 0]), labels[:384])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float((head(entry.from_cache(maps[384:])[:, 0]).argmax(1) == labels[384:]).float().mean())

    average, attended = trained(False), trained(True)
    assert attended > 0.9 and average < 0.7, (average, attended)


def test_stage_1_trains_the_attention_from_the_cached_maps(built_small, tmp_path):
    cfg = make_train_config(1, "tiny", ["num_workers=0", "epochs=2", "model.features=attend"], data=str(built_small),
                            run=str(tmp_path))
    run_stage(cfg, progress=False)
    model, _ = load_checkpoint(tmp_path / "stage1" / "last.pt")
    assert model.cfg.features == "attend"
    assert model.frames.score[2].weight.abs().sum() > 0  # it left its zero start: the captions trained it
    caches = list((tmp_path / "features").glob("train-*.pt"))
    assert len(caches) == 1 and torch.load(caches[0], weights_only=True)["feats"].dim() == 5  # maps, not features


def test_where_follows_the_attention():
    """attend.where: a head that looks at one cell reports that cell's position and no spread; a uniform
    head reports the centre and the grid's spread."""
    from vidcap.model.attend import attention_where

    w = torch.zeros(1, 1, 2, 5, 5)
    w[0, 0, 0, 0, 4] = 1.0  # top right
    w[0, 0, 1] = 1 / 25
    x, y, spread, ux, uy, uspread = attention_where(w)[0, 0].tolist()
    assert (x, y, spread) == (1.0, -1.0, 0.0)
    assert abs(ux) < 1e-6 and abs(uy) < 1e-6 and abs(uspread - 1.0) < 1e-6  # sqrt(mean x^2 + mean y^2) = 1 on 5x5


def test_feature_norm_never_divides_the_centroids_by_their_zero_start():
    """Under the uniform start every clip's centroids are the same, so their training-set std is 0; the
    standardisation divides them by at least 0.5 (attend's std_floor, before the block balance), not by
    the 1e-4 that multiplied them by thousands once they moved."""
    torch.manual_seed(0)
    m = create_model(make_config("tiny", 12, features="attend", feature_norm=True, motion="diff"))
    with torch.no_grad():
        feats = m.frame_features(torch.randint(0, 255, (4, 5, 3, 64, 64), dtype=torch.uint8))
    m.set_feature_stats(feats)
    where = slice(m.feature_dim - 3 * m.frames.cfg.heads, m.feature_dim)
    assert feats[..., where].std((0, 1)).max() < 1e-6
    least = 0.5 * m.block_balance()[where]  # the floor, then each block's share of the variance
    assert torch.allclose(m.feat_std[where], least) and torch.allclose(m.diff_std[where], least)


def test_focus_heads_add_learned_attention_beside_the_cues_and_zero_heads_change_nothing():
    """``model.focus.heads=N``: the cues' features unchanged, then N heads over the fine maps (uniform
    at first: their average) and where each looks; the cache keeps cues and maps, and the heads learn
    from it. heads=0 is the focus entry as before: one tensor, the same features."""
    torch.manual_seed(0)
    settings = {"focus.frame_focus": True, "focus.track": True, "focus.scene": False}
    plain = create_model(make_config("tiny", 12, features="focus", **settings)).eval()
    torch.manual_seed(0)
    heads = create_model(make_config("tiny", 12, features="focus", **settings, **{"focus.heads": 2})).eval()
    x = torch.randint(0, 255, (2, 5, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        cues = plain.cacheable_features(x)
        cached = heads.cacheable_features(x)
        feats = heads.features_from_cache(cached)
        torch.testing.assert_close(feats, heads.frame_features(x))
    assert torch.is_tensor(cues) and set(cached) == {"cues", "maps"}
    torch.testing.assert_close(cached["cues"], cues)
    d, c = cues.shape[-1], cached["maps"].shape[2] - 1
    assert heads.feature_dim == d + 2 * c + 6 and feats.shape == (2, 5, heads.feature_dim)
    torch.testing.assert_close(feats[..., :d], cues)
    average = cached["maps"][:, :, :c].mean((-2, -1))
    torch.testing.assert_close(feats[..., d : d + c], average)  # uniform start
    assert cached["maps"][:, :, c].amax() <= 1 + 1e-6  # the cue channel, each frame's largest cell 1
    assert heads.frames.std_floor()[-6:].eq(0.5).all()
    heads.train()
    heads.features_from_cache(cached).pow(2).sum().backward()
    assert heads.frames.score[2].weight.grad.abs().sum() > 0  # the heads learn from the cache
