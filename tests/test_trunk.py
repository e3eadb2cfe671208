"""trunk_blocks=K (model/trunk.py): the CNN's stem and first K blocks frozen, their maps cached once per
clip, and only the blocks above trained -- the same features and gradients as the whole CNN with those
blocks frozen, for every frame-features entry that splits, without running the trunk again in a step;
off by default; refused in one line where it cannot apply."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from vidcap.errors import UserError
from vidcap.model import create_model, make_config, save_checkpoint
from vidcap.model import trunk as trunk_mod
from vidcap.shards.layout import DataInfo
from vidcap.train.config import make_train_config

# (backbone preset settings, features, trunk K): tiny's 4 blocks; Lite0's 7, its focus and attend
# reading the stride-8 map (after block 3) and the stride-16 map (after block 5)
CASES = [
    ({"backbone": "tiny"}, "pooled", 2),
    ({"backbone": "tiny"}, "focus", 1),
    ({"backbone": "tf_efficientnet_lite0", "image_size": 96}, "pooled", 4),
    ({"backbone": "tf_efficientnet_lite0", "image_size": 96}, "focus", 3),
    ({"backbone": "tf_efficientnet_lite0", "image_size": 96}, "attend", 2),
    ({"backbone": "tf_efficientnet_lite0", "image_size": 96, "focus.frame_focus": True, "focus.heads": 2}, "focus", 3),
]


def _model(backbone: dict, features: str):
    torch.manual_seed(0)
    cfg = make_config("tiny", 20, pretrained=False, dropout=0.0, feature_norm=False, features=features, **backbone)
    m = create_model(cfg)
    m.freeze_backbone(False)  # a trained CNN, BatchNorm on its running statistics (stage 3's default)
    m.train()
    return m


def _frames(size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (2, 5, 3, size, size), generator=g, dtype=torch.uint8)


def _loss(feats: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(-1, 1, feats.numel()).view_as(feats)
    return (feats * w).sum()


@pytest.mark.parametrize("backbone,features,k", CASES, ids=[f"{b['backbone']}-{f}{'+heads' * ('focus.heads' in b)}-{k}" for b, f, k in CASES])
def test_the_top_over_cached_trunk_maps_equals_the_whole_cnn_with_the_trunk_frozen(backbone, features, k):
    top = _model(backbone, features)
    whole = copy.deepcopy(top)
    for _, m in trunk_mod.trunk_modules(whole.backbone, k):  # the reference: the whole CNN runs, K blocks frozen
        m.requires_grad_(False)
    top.set_trunk(k)
    frames = _frames(top.cfg.image_size)

    calls = []
    first = trunk_mod.trunk_modules(top.backbone, k)[0][1]
    hook = first.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        cached = top.cacheable_features(frames)
    assert set(cached) == {"frames", "trunk"} and calls == [1]  # the trunk ran once, for the cache
    for _ in range(2):
        top.zero_grad()
        got = top.features_from_cache(cached)
        _loss(got).backward()
    assert calls == [1]  # a step runs the blocks above only
    hook.remove()

    want = whole.frame_features(frames)
    _loss(want).backward()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    grads_top = {n: p.grad for n, p in top.named_parameters() if p.grad is not None}
    grads_whole = {n: p.grad for n, p in whole.named_parameters() if p.grad is not None}
    assert grads_top.keys() == grads_whole.keys()
    assert any(n.startswith("backbone.") for n in grads_top)  # the top of the CNN learns...
    trunk_names = {f"backbone.{p}." for p, _ in trunk_mod.trunk_modules(top.backbone, k)}
    assert not any(n.startswith(tuple(trunk_names)) for n in grads_top)  # ...its trunk does not
    for n in grads_top:
        torch.testing.assert_close(grads_top[n], grads_whole[n], rtol=1e-3, atol=1e-6, msg=n)


def test_trunk_blocks_is_off_by_default_and_then_the_whole_cnn_trains():
    cfg = make_train_config("e2e", "tiny", [])
    assert cfg.trunk_blocks == 0
    m = _model({"backbone": "tiny"}, "pooled")
    m.set_trunk(0)
    assert m.trunk_blocks == 0 and all(p.requires_grad for p in m.backbone.parameters())
    assert torch.is_tensor(m.cacheable_features(_frames(m.cfg.image_size)))


def test_a_trunk_that_cannot_be_is_refused_in_one_line():
    m = _model({"backbone": "tiny"}, "pooled")
    with pytest.raises(ValueError, match=r"trunk_blocks=4: backbone tiny has 4 blocks; the trunk takes 1 to 3"):
        m.set_trunk(4)
    with pytest.raises(ValueError, match="not split into blocks here"):
        trunk_mod.check_trunk(torch.nn.Conv2d(3, 8, 3), 1, "inception_resnet_v2")
    focus = _model({"backbone": "tf_efficientnet_lite0", "image_size": 96}, "focus")
    focus.set_trunk(4)  # focus reads the stride-8 map, which block 3 ends with: inside a trunk of 4
    with pytest.raises(ValueError, match=r"trunk_blocks=4: the frame features read the map after block 3"):
        focus.cacheable_features(_frames(96))
    with pytest.raises(ValueError, match=r"trunk_blocks=2: the CNN is frozen in this recipe \(xe\)"):
        make_train_config("xe", "tiny", ["trunk_blocks=2"])
    with pytest.raises(ValueError, match=r"trunk_blocks=2 with bn_stats=true"):
        make_train_config("e2e", "tiny", ["trunk_blocks=2", "bn_stats=true"])


def test_stage_3_with_a_trunk_caches_it_once_and_trains_the_top(built_small, tmp_path):
    """A real stage-3 run (RL + attributes, CNN trained): the features are computed once for the
    training split (one `features` record), the trunk's weights do not move, the top's do."""
    from vidcap.train.loop import Trainer

    info = DataInfo.load(built_small)
    model = create_model(make_config("tiny", len(info.itos), n_attributes=len(info.attributes)))
    save_checkpoint(tmp_path / "init.pt", model, info.itos, info.attributes)
    cfg = make_train_config("e2e", "tiny", ["trunk_blocks=2", "num_workers=0", "epochs=2", "save_every=0"],
                            data=str(built_small), run=str(tmp_path / "run"), init=str(tmp_path / "init.pt"))
    trainer = Trainer(cfg, progress=False)
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    trainer.fit()
    after = trainer.model.backbone.state_dict()
    trunk = {f"{p}." for p, _ in trunk_mod.trunk_modules(trainer.model.backbone, 2)}
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and not any(k.startswith(tuple(trunk)) for k in moved)
    assert any(k.startswith("features.6.") for k in moved)  # the third block, above the trunk
    records = [json.loads(x) for x in (tmp_path / "run" / "stage3" / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records if r["event"] == "features"] == ["train", "val"]
    assert len([r for r in records if r["event"] == "epoch"]) == 2


def test_trunk_blocks_on_a_backbone_without_blocks_is_one_line(built_small, tmp_path):
    info = DataInfo.load(built_small)
    model = create_model(make_config("tiny", len(info.itos), n_attributes=len(info.attributes)))
    save_checkpoint(tmp_path / "init.pt", model, info.itos, info.attributes)
    from vidcap.train.loop import Trainer

    cfg = make_train_config("e2e", "tiny", ["trunk_blocks=9", "num_workers=0"], data=str(built_small),
                            run=str(tmp_path / "run"), init=str(tmp_path / "init.pt"))
    with pytest.raises(UserError, match=r"trunk_blocks=9: backbone tiny has 4 blocks"):
        Trainer(cfg, progress=False)
