"""The three training stages, resume, the loaders, the feature cache, eval and caption."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import tool

from vidcap.errors import UserError
from vidcap.model.checkpoint import load_checkpoint
from vidcap.shards.layout import DataInfo
from vidcap.train import run_lock
from vidcap.train.config import make_train_config
from vidcap.train.data import SplitStream, torch_loader
from vidcap.train.loop import Trainer, lr_factor, run_stage
from vidcap.train.losses import rl_loss, sequence_mask
from vidcap.train.recipes import STAGES
from vidcap.train.resume import Position


def cfg_for(stage, data, run, *overrides):
    return make_train_config(stage, "tiny", ["num_workers=0", *overrides], data=str(data), run=str(run))


def backbone_state(path):
    model, _ = load_checkpoint(path)
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


@pytest.fixture(scope="module")
def three_stages(built_small, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    results = [run_stage(cfg_for(s, built_small, run), progress=False) for s in (1, 2, 3)]
    return run, results


def test_each_stage_trains_and_writes_its_reports(three_stages):
    run, results = three_stages
    assert [r["dir"] for r in results] == [str(run / f"stage{s}") for s in (1, 2, 3)]
    for stage in (1, 2, 3):
        d = run / f"stage{stage}"
        for name in ("best.pt", "last.pt", "metrics.jsonl", "config.json", "curves.png"):
            assert (d / name).exists(), (stage, name)
        assert list((d / "tb").glob("events.out.tfevents.*"))
        records = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        epochs = [x for x in records if x["event"] == "epoch"]
        assert epochs and all("val_CIDEr" in e for e in epochs)
        steps = [x for x in records if x["event"] == "step"]
        assert steps and all(np.isfinite(x["loss"]) for x in steps)
        if stage > 1:
            assert all("reward" in x and "baseline" in x for x in steps)
        if stage == 3:
            assert all("attr_loss" in x for x in steps)
        assert json.loads((d / "config.json").read_text())["recipe"] == STAGES[stage]
    start2 = json.loads((run / "stage2" / "metrics.jsonl").read_text().splitlines()[0])
    assert start2["init_from"].endswith("stage1/best.pt")


def test_stage_3_trains_the_backbone_and_stages_1_2_do_not(three_stages, built_small):
    run, _ = three_stages
    fresh = Trainer(cfg_for(1, built_small, run / "fresh"), progress=False).model.backbone.state_dict()
    s1, s2, s3 = (backbone_state(run / f"stage{s}" / "last.pt") for s in (1, 2, 3))
    weights = [k for k in s1 if "num_batches" not in k]
    assert all(torch.equal(fresh[k], s1[k]) and torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s2[k], s3[k]) for k in weights)


def test_stage_3_records_each_cnn_blocks_gradient_and_motion(three_stages):
    """Stage 3's epoch records say, per block of the CNN, the RMS gradient norm of its steps and how
    far its weights moved (train/cnn_watch.py); the numbers are those of the weights it saved."""
    run, _ = three_stages
    records = {s: [json.loads(x) for x in (run / f"stage{s}" / "metrics.jsonl").read_text().splitlines()]
               for s in (1, 3)}
    assert not any("cnn_blocks" in x for x in records[1])  # a frozen CNN has nothing to say
    epochs = [x for x in records[3] if x["event"] == "epoch"]
    blocks = epochs[-1]["cnn_blocks"]
    s2, s3 = backbone_state(run / "stage2" / "best.pt"), backbone_state(run / "stage3" / "last.pt")  # its start, end
    for block, (grad_rms, change) in blocks.items():
        keys = [k for k in s2 if (k == block or k.startswith(block + ".")) and "running" not in k
                and "num_batches" not in k]
        assert keys, block
        moved = sum(float((s3[k] - s2[k]).square().sum()) for k in keys) ** 0.5
        size = sum(float(s2[k].square().sum()) for k in keys) ** 0.5
        assert grad_rms > 0 and change == pytest.approx(moved / size, rel=1e-3, abs=1e-9)


def test_lr_factor_constant_and_cosine():
    assert [lr_factor("constant", s, 10) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert lr_factor("cosine", 0, 10) == 1.0
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 9, 10) == pytest.approx(0.5 * (1 + np.cos(0.9 * np.pi)))  # 0.0245
    assert lr_factor("cosine", 12, 10) == pytest.approx(0.0)  # past the end: stays at the bottom


def test_the_cosine_follows_the_epochs_done_not_the_steps_taken(built_small, tmp_path):
    """A resume at an epoch end may use another number of processes (so another number of batches per
    epoch, and of steps taken): the rate depends on where training stands in its epochs alone."""
    t = Trainer(cfg_for(1, built_small, tmp_path, "lr_schedule=cosine", "epochs=4"), progress=False)
    n, base = t.n_batches(), t.cfg.lr
    batch = next(iter(t.epoch_batches(2)))
    for steps_taken in (0, 2 * n, 7 * n):  # what other world sizes would have counted by now
        t.position = Position(2, 0, steps_taken)
        t.step(batch, 2)
        assert t.opt.param_groups[0]["lr"] == pytest.approx(base * lr_factor("cosine", 2 * n, 4 * n))  # half-way: 0.5


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_each_step_logs_its_lr_and_cosine_falls_to_near_zero(built_small, tmp_path, schedule):
    cfg = cfg_for(1, built_small, tmp_path, f"lr_schedule={schedule}", "epochs=3")
    run_stage(cfg, progress=False)
    records = [json.loads(x) for x in (tmp_path / "stage1" / "metrics.jsonl").read_text().splitlines()]
    lrs = [x["lr"] for x in records if x["event"] == "step"]
    assert len(lrs) >= 6 and lrs[0] == pytest.approx(cfg.lr)
    if schedule == "constant":
        assert lrs == [pytest.approx(cfg.lr)] * len(lrs)
    else:
        assert all(b < a for a, b in zip(lrs[:-1], lrs[1:], strict=True)) and lrs[-1] < 0.1 * cfg.lr


def test_rl_loss_on_a_hand_computed_case():
    # two clips x M=2 samples; <eos> = 2, pad = 0
    seqs = torch.tensor([[5, 2, 0], [6, 7, 2], [2, 0, 0], [5, 6, 7]])
    logps = torch.tensor([[-1.0, -0.5, 0.0], [-2.0, -1.0, -0.5], [-0.25, 0.0, 0.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.5, 0.2, 0.0], dtype=torch.float64)
    baseline = torch.tensor([0.6, 0.6, 0.1, 0.1], dtype=torch.float64)  # greedy CIDEr-D of clip 0 and clip 1, repeated M times
    assert torch.equal(sequence_mask(seqs), torch.tensor([[1.0, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]]))
    # advantages 0.4, -0.1, 0.1, -0.1; sequence log-probs -1.5, -3.5, -0.25, -3.0
    expected = -(0.4 * -1.5 + -0.1 * -3.5 + 0.1 * -0.25 + -0.1 * -3.0) / 4
    assert rl_loss(logps, seqs, rewards, baseline).item() == pytest.approx(expected)
    lp = logps.clone().requires_grad_(True)
    rl_loss(lp, seqs, rewards, baseline).backward()
    assert lp.grad[0, 2] == 0 and lp.grad[2, 1] == 0 and lp.grad[0, 0] == pytest.approx(-0.4 / 4)


def test_resume_continues_exactly(built_small, tmp_path):
    full = run_stage(cfg_for(1, built_small, tmp_path / "a", "epochs=3", "feature_cache=false", "batch_size=4"), progress=False)
    run_stage(cfg_for(1, built_small, tmp_path / "b", "epochs=1", "feature_cache=false", "batch_size=4"), progress=False)
    cfg = cfg_for(1, built_small, tmp_path / "b", "epochs=3", "feature_cache=false", "batch_size=4")
    cfg.resume = True
    resumed = run_stage(cfg, progress=False)

    def losses(run, epoch):
        recs = [json.loads(x) for x in (run / "stage1" / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in recs if r["event"] == "step" and r["epoch"] == epoch]

    assert losses(tmp_path / "b", 1) == losses(tmp_path / "a", 1) and losses(tmp_path / "a", 1)
    assert losses(tmp_path / "b", 2) == losses(tmp_path / "a", 2)
    assert resumed["history"][-1]["val_CIDEr"] == full["history"][-1]["val_CIDEr"]


def test_feature_cache_is_exact(built_small, tmp_path):
    t = Trainer(cfg_for(1, built_small, tmp_path), progress=False)
    fs = t.features("val")
    batch = next(iter(torch_loader(SplitStream(t.info, "val"), t.image_size, 64, 0)))
    t.model.eval()
    with torch.no_grad():
        direct = t.model.frame_features(batch["frames"])
    assert fs.clip_ids == batch["clip_id"] and torch.equal(fs.feats, direct)
    again = Trainer(cfg_for(1, built_small, tmp_path), progress=False).features("val")
    assert torch.equal(again.feats, fs.feats)
    assert len(list((tmp_path / "features").glob("val-*.pt"))) == 1


def test_loader_order_is_a_function_of_seed_and_epoch_whatever_the_workers(built_small):
    info = DataInfo.load(built_small)

    def order(workers, epoch=0, skip=0):
        stream = SplitStream(info, "train", shuffle=True, seed=5, epoch=epoch, shuffle_buffer=8)
        return [c for b in torch_loader(stream, 32, 3, workers, skip) for c in b["clip_id"]]

    one = order(0)
    assert sorted(one) == sorted(m["clip_id"] for m in info.metadata("train")) and len(set(one)) == len(one)
    assert order(1) == one and order(2) == one  # workers decode whole batches, in order
    assert order(2, skip=2) == one[6:]  # a resumed epoch: the first batches skipped, the rest unchanged
    assert order(0, epoch=1) != one


def test_dali_cpu_loader_yields_the_default_loaders_frames(built_small):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI not installed (pip install 'vidcap[dali]')")
    from vidcap.train.dali_loader import DaliLoader

    info = DataInfo.load(built_small)
    ref = {c: f for b in torch_loader(SplitStream(info, "train"), info.frame_size, 4, 0)
           for c, f in zip(b["clip_id"], b["frames"], strict=True)}
    got = {}
    for b in DaliLoader(info, "train", info.frame_size, batch_size=4, shuffle=False, device="cpu"):
        assert b["frames"].dtype == torch.uint8 and b["frames"].shape[1:] == (5, 3, 64, 64)
        got.update(zip(b["clip_id"], b["frames"], strict=True))
    assert list(got) == list(ref)
    diff = torch.stack([(got[c].int() - ref[c].int()).abs() for c in ref])
    assert diff.float().mean() < 0.5 and diff.max() <= 8, (diff.float().mean(), diff.max())


def test_dali_on_cuda_without_a_gpu_fails_loudly(built_small):
    pytest.importorskip("nvidia.dali")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from vidcap.train.dali_loader import DaliLoader

    with pytest.raises(UserError, match="CUDA is not available"):
        DaliLoader(DataInfo.load(built_small), "train", 64, 4, False, device="cuda")


def test_config_errors_are_clear(built_small, tmp_path):
    with pytest.raises(ValueError, match="unknown key 'epoch'"):
        make_train_config(1, "tiny", ["epoch=3"])
    with pytest.raises(ValueError, match="expected key=value"):
        make_train_config(1, "tiny", ["epochs"])
    assert make_train_config(2, "paper", []).lr == 1e-6 and make_train_config(1, "paper", []).batch_size == 64
    assert make_train_config(3, "paper", []).batch_size == 16 and make_train_config(2, "paper", []).batch_size == 256
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="cuda"):
            Trainer(cfg_for(1, built_small, tmp_path, "device=cuda"), progress=False)
    r = subprocess.run([tool("train"), "--stage", "2", "--data", str(built_small), "--run", str(tmp_path / "none"), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "run `train --stage 1` first" in r.stderr


@pytest.mark.parametrize("amp, dtype", [("false", torch.float32), ("true", torch.bfloat16)])
def test_amp_is_bf16_autocast_on_the_device_of_the_model(built_small, tmp_path, amp, dtype):
    """amp=true autocasts the step on the model's own device: with "cuda" hard-coded, a CPU model
    stayed in fp32 (and so amp=true was refused on the CPU); bench/acceptance/gpu_check.py --dry-run relies on it."""
    trainer = Trainer(cfg_for(1, built_small, tmp_path, f"amp={amp}", "feature_cache=false"), progress=False)
    seen: list[torch.dtype] = []
    try:
        for m in trainer.model.modules():
            if isinstance(m, torch.nn.Linear):
                m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        stats = trainer.step(next(iter(trainer.epoch_batches(0))), 0)
    finally:
        trainer.log.close()
        run_lock.release(trainer.dir)
        trainer.close()
    assert seen and set(seen) == {dtype} and np.isfinite(stats["loss"])


def test_train_eval_and_caption(three_stages, built_small, synth_small, tmp_path):
    run, _ = three_stages
    ckpt = run / "stage3" / "best.pt"
    r = subprocess.run([tool("train"), "eval", "--ckpt", str(ckpt), "--data", str(built_small), "--split", "test",
                        "--beam", "3", "--out", str(tmp_path / "ev")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr"} <= set(metrics) and metrics["beam"] == 3
    preds = json.loads((tmp_path / "ev" / "predictions.json").read_text())
    assert len(preds) == metrics["clips"] > 0
    assert "<img src='data:image/jpeg;base64," in (tmp_path / "ev" / "gallery.html").read_text()
    (tmp_path / "bad.mp4").write_text("not a video")
    video = synth_small / "videos" / "video1.mp4"
    r = subprocess.run([tool("caption"), str(video), str(tmp_path / "bad.mp4"), "--ckpt", str(ckpt)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stdout.startswith(f"{video}: ") and len(r.stdout.split(": ", 1)[1].strip()) > 0
    assert "bad.mp4" in r.stderr


def test_max_clips_streams_exactly_the_clips_whose_references_are_loaded(built_small, tmp_path):
    t = Trainer(cfg_for(1, built_small, tmp_path, "max_clips=5", "feature_cache=false"), progress=False)
    for epoch in (0, 1):
        seen = [c for b in t.epoch_batches(epoch) for c in b["clip_id"]]
        assert sorted(seen) == sorted(t.train_refs) and len(seen) == 5
