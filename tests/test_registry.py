"""Architectures and backbones come from registries. Checkpoints record the
architecture and the backbone's preprocessing; old checkpoints load as S2VT with the old (0.5)
normalisation; every backbone's mean, std and input size come from its own pretrained config."""

from __future__ import annotations

from dataclasses import fields

import pytest
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vidcap.model import (
    ARCHS,
    BACKBONES,
    S2VTCaptioner,
    create_backbone,
    create_model,
    load_checkpoint,
    make_config,
    save_checkpoint,
)
from vidcap.model.checkpoint import CheckpointError
from vidcap.model.frames import FRAME_FEATURES
from vidcap.model.registry import LEGACY_PIXEL_NORM
from vidcap.tokens import SPECIALS as TOKEN_SPECIALS
from vidcap.train.data import DataInfo
from vidcap.train.features import _fingerprint

VOCAB = [*TOKEN_SPECIALS, *(f"w{i}" for i in range(16))]  # the special tokens first, as every vocabulary


def expected_preprocess(name: str) -> tuple[tuple, tuple, int]:
    """What each backbone's own config says: timm's pretrained config, or tiny's (timm's ImageNet defaults)."""
    if name == "tiny":
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD), 64
    cfg = timm.models.get_pretrained_cfg(name)
    return tuple(cfg.mean), tuple(cfg.std), cfg.input_size[-1]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_carries_its_own_preprocessing(name, tmp_path):
    mean, std, size = expected_preprocess(name)
    _, info = create_backbone(name, pretrained=False)
    assert (info.mean, info.std, info.input_size) == (mean, std, size)
    torch.manual_seed(0)
    m = create_model(make_config("tiny", len(VOCAB), backbone=name, image_size=None)).eval()
    assert (m.cfg.pixel_mean, m.cfg.pixel_std, m.cfg.image_size) == (mean, std, size)
    assert torch.equal(m.pixel_mean.flatten(), torch.tensor(mean)) and torch.equal(m.pixel_std.flatten(), torch.tensor(std))
    # frame_features -- what training, `caption` and the DALI path's uint8 frames all go through -- applies them
    frames = torch.randint(0, 256, (1, 2, 3, 96, 96), dtype=torch.uint8)
    x = (frames.flatten(0, 1).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():  # (frame_features runs the BatchNorm-folded copy: equal up to float rounding)
        assert torch.allclose(m.frame_features(frames), m.backbone(x).view(1, 2, -1), rtol=1e-4, atol=1e-4)
    save_checkpoint(tmp_path / "c.pt", m, VOCAB, ["a"] * 16)
    m2, raw = load_checkpoint(tmp_path / "c.pt")
    assert list(raw["config"]["pixel_mean"]) == list(mean) and raw["config"]["image_size"] == size
    assert m2.cfg == m.cfg and torch.equal(m2.pixel_mean, m.pixel_mean) and torch.equal(m2.pixel_std, m.pixel_std)


def test_a_checkpoint_normalises_as_it_was_trained_not_as_the_backbone_says_today(tmp_path):
    m = create_model(make_config("tiny", len(VOCAB), pixel_mean=(0.1, 0.2, 0.3), pixel_std=(0.7, 0.8, 0.9)))
    save_checkpoint(tmp_path / "c.pt", m, VOCAB, ["a"] * 16)
    m2, _ = load_checkpoint(tmp_path / "c.pt")
    assert torch.allclose(m2.pixel_mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(m2.pixel_std.flatten(), torch.tensor([0.7, 0.8, 0.9]))


def test_checkpoints_without_an_architecture_load_as_s2vt_with_the_old_normalisation(tmp_path):
    """A checkpoint written before issue 12: no arch, no pixel_mean / pixel_std (every backbone used 0.5)."""
    torch.manual_seed(0)
    old = S2VTCaptioner(make_config("tiny", len(VOCAB), init_range=0.6, pixel_mean=LEGACY_PIXEL_NORM,
                                pixel_std=LEGACY_PIXEL_NORM)).eval()
    save_checkpoint(tmp_path / "old.pt", old, VOCAB, ["a"] * 16)
    raw = torch.load(tmp_path / "old.pt", weights_only=True)
    for key in ("arch", "pixel_mean", "pixel_std"):
        del raw["config"][key]
    torch.save(raw, tmp_path / "old.pt")
    m, _ = load_checkpoint(tmp_path / "old.pt")
    assert type(m) is S2VTCaptioner and m.cfg.arch == "s2vt" and m.cfg.pixel_mean == LEGACY_PIXEL_NORM
    frames = torch.randint(0, 256, (3, 5, 3, 64, 64), dtype=torch.uint8)
    assert torch.equal(m.greedy(m.frame_features(frames)), old.greedy(old.frame_features(frames)))


def test_an_unknown_architecture_in_a_checkpoint_is_one_line(tmp_path):
    save_checkpoint(tmp_path / "c.pt", create_model(make_config("tiny", len(VOCAB))), VOCAB, ["a"] * 16)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    raw["config"]["arch"] = "lstm9"
    torch.save(raw, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"c\.pt: architecture 'lstm9' is not one this vidcap knows "
                                              r"\(s2vt, transformer\)$"):
        load_checkpoint(tmp_path / "c.pt")


@pytest.mark.parametrize("preset", ["tiny", "cpu-small", "paper"])
def test_every_architecture_has_every_preset_at_comparable_size(preset):
    """Encoder + decoder of each architecture within 25% of S2VT's two LSTMs at the same preset."""
    sizes = {}
    for arch in ARCHS:
        with torch.device("meta"):  # shapes only: the paper preset's CNN is not built for real
            m = create_model(make_config(preset, 1000, arch=arch, backbone="tiny", pretrained=False))
        assert m.cfg.arch == arch and m.cfg.image_size == make_config(preset, 10, arch=arch).image_size
        sizes[arch] = sum(p.numel() for n, p in m.named_parameters()
                          if n.split(".")[0] not in ("backbone", "img_fc", "word_emb", "out", "attr_head"))
    assert all(0.75 <= n / sizes["s2vt"] <= 1.25 for n in sizes.values()), sizes


def test_settings_of_another_architecture_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"model\.motion: not a setting of model\.arch=transformer; its settings: "):
        make_config("tiny", 20, arch="transformer", motion="diff")
    with pytest.raises(ValueError, match=r"model\.d_model: not a setting of model\.arch=s2vt"):
        make_config("tiny", 20, d_model=64)
    with pytest.raises(ValueError, match=r"model\.d_model=30 is not a multiple of model\.heads=4"):
        create_model(make_config("tiny", 20, arch="transformer", d_model=30, heads=4))
    with pytest.raises(ValueError, match=r"model\.arch=gru: unknown architecture; choose from s2vt, transformer"):
        make_config("tiny", 20, arch="gru")


def test_the_feature_cache_key_includes_the_normalisation(built_small):
    info = DataInfo.load(built_small)
    torch.manual_seed(0)
    a = create_model(make_config("tiny", len(info.itos)))
    torch.manual_seed(0)
    b = create_model(make_config("tiny", len(info.itos), pixel_mean=LEGACY_PIXEL_NORM))
    assert _fingerprint(a, info, "val", 64, None) != _fingerprint(b, info, "val", 64, None)
    torch.manual_seed(0)
    assert _fingerprint(create_model(make_config("tiny", len(info.itos))), info, "val", 64, None) == \
        _fingerprint(a, info, "val", 64, None)


def _changed_settings() -> list[tuple[str, str, object]]:
    """(entry, setting, a value other than its default) for every setting of every frame-features entry."""
    out = []
    for name, cls in FRAME_FEATURES.items():
        default = cls.Config()
        for f in fields(cls.Config):
            value = getattr(default, f.name)
            if f.name in cls.Config.CHOICES:
                other = next(c for c in cls.Config.CHOICES[f.name] if c != value)
            else:
                other = (not value) if isinstance(value, bool) else value * 0.6
            out.append((name, f.name, other))
    return out


# what a setting needs beside it to be accepted (foreground is what the frame-focus block pools over)
NEEDS = {("focus", "foreground"): {"frame_focus": True}}


@pytest.mark.parametrize("entry, setting, value", _changed_settings())
def test_the_feature_cache_key_includes_every_setting_that_changes_the_features(built_small, entry, setting, value):
    """Each setting of each frame-features entry changes what a frame's cached features are: a run
    folder's cache computed without it must not be read with it (the same CNN weights in both)."""
    info = DataInfo.load(built_small)
    base = {f"{entry}.{k}": v for k, v in NEEDS.get((entry, setting), {}).items()}
    torch.manual_seed(0)
    a = create_model(make_config("tiny", len(info.itos), features=entry, **base))
    torch.manual_seed(0)
    b = create_model(make_config("tiny", len(info.itos), features=entry, **base, **{f"{entry}.{setting}": value}))
    if not a.frames.learned:
        assert _fingerprint(a, info, "val", 64, None) != _fingerprint(b, info, "val", 64, None)
        return
    # a learned entry's cache holds what its weights read: the key changes exactly when that does
    x = torch.randint(0, 255, (1, 5, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        same = torch.equal(a.eval().cacheable_features(x), b.eval().cacheable_features(x))
    assert same == (_fingerprint(a, info, "val", 64, None) == _fingerprint(b, info, "val", 64, None))


@pytest.mark.parametrize("entry", sorted(FRAME_FEATURES))
def test_every_frame_features_entry_makes_its_blocks_and_trains_the_cnn(entry):
    """Each entry turns uint8 frames into (B, K, sum(blocks)) features, the same on a second call, and
    when the CNN trains (stage 3) gradients reach it through the entry; frozen, the BatchNorm-folded
    copy gives the same features."""
    torch.manual_seed(0)
    m = create_model(make_config("tiny", 12, features=entry))
    assert m.feature_dim == sum(m.frames.blocks) == m.attr_head.in_features
    assert m.frames.fingerprint()[0] == entry
    assert m.frames.learned or m.cfg.features_config == m.frames.fingerprint()[1]
    x = torch.randint(0, 255, (2, 5, 3, 64, 64), dtype=torch.uint8)
    m.freeze_backbone(False)
    m.eval()
    feats = m.frame_features(x)
    assert feats.shape == (2, 5, m.feature_dim) and torch.isfinite(feats).all()
    feats.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())
    m.freeze_backbone(True)
    with torch.no_grad():
        torch.testing.assert_close(m.frame_features(x), feats.detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("entry", sorted(FRAME_FEATURES))
def test_a_setting_of_another_entry_is_a_one_line_error(entry):
    other = next(n for n in sorted(FRAME_FEATURES) if n != entry and fields(FRAME_FEATURES[n].Config))
    key = fields(FRAME_FEATURES[other].Config)[0].name
    with pytest.raises(ValueError, match=rf"^model\.{other}\.{key}: a setting of model\.features={other}, "
                                         rf"but this model's is {entry}$"):
        make_config("tiny", 12, features=entry, **{f"{other}.{key}": 1})
    with pytest.raises(ValueError, match=rf"^model\.{entry}\.nosuch: not a setting of model\.features={entry}"):
        create_model(make_config("tiny", 12, features=entry, **{f"{entry}.nosuch": 1}))
