"""Every registered architecture trains through the paper's three stages with the
same trainer (tiny preset), and after each stage decodes with every decoder; and the issue's "done
when", through the console scripts: a transformer trained by `train --stage 1/2`, captioned by `caption`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import tool

from vidcap.model import ARCHS, load_checkpoint
from vidcap.shards.layout import DataInfo
from vidcap.tokens import BOS, EOS, PAD
from vidcap.train.config import make_train_config
from vidcap.train.data import SplitStream, torch_loader
from vidcap.train.loop import run_stage
from vidcap.train.losses import sequence_mask

DECODERS = ("greedy", "sample", "beam")
STAGE_LOGS = {1: ("xe_loss",), 2: ("rl_loss", "reward", "baseline"), 3: ("rl_loss", "reward", "attr_loss")}


@pytest.fixture(scope="module")
def trained(built_small, tmp_path_factory):
    """arch -> run folder with stage1..3, each architecture trained once (on first use)."""
    runs: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in runs:
            run = tmp_path_factory.mktemp(f"run-{arch}")
            for stage in (1, 2, 3):
                overrides = ["num_workers=0", *([f"model.arch={arch}"] if stage == 1 else [])]
                run_stage(make_train_config(stage, "tiny", overrides, data=str(built_small), run=str(run)), progress=False)
            runs[arch] = run
        return runs[arch]

    return get


@pytest.fixture(scope="module")
def val_frames(built_small) -> torch.Tensor:
    info = DataInfo.load(built_small)
    return next(iter(torch_loader(SplitStream(info, "val"), 64, 8, 0)))["frames"]


def _seq_logp(model, feats: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
    lp = model(feats, seqs).gather(2, seqs[..., None]).squeeze(2)
    return torch.where(sequence_mask(seqs) > 0, lp, 0.0).sum(1)


def _check_sequences(seqs: torch.Tensor, vocab: int) -> None:
    assert seqs.dtype == torch.long and bool(((seqs >= 0) & (seqs < vocab)).all()) and not bool((seqs == BOS).any())
    mask = sequence_mask(seqs)
    assert torch.equal(seqs == PAD, mask == 0)  # PAD exactly after <eos> (or nowhere)
    ended = (seqs == EOS).any(1)
    assert bool((mask.sum(1)[~ended] == seqs.shape[1]).all())


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("stage", (1, 2, 3))
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_architecture_trains_each_stage_and_decodes(arch, stage, decoder, trained, val_frames):
    d = trained(arch) / f"stage{stage}"
    records = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"]
    assert steps and all(k in s for s in steps for k in STAGE_LOGS[stage])
    model, ckpt = load_checkpoint(d / "best.pt")
    assert ckpt["config"]["arch"] == arch and type(model) is ARCHS[arch].model
    with torch.no_grad():
        feats = model.frame_features(val_frames)
        if decoder == "greedy":
            seqs = model.greedy(feats)
        elif decoder == "beam":
            seqs = model.beam(feats, 3)
            assert bool((_seq_logp(model, feats, seqs) >= _seq_logp(model, feats, model.greedy(feats)) - 1e-4).all())
        else:
            torch.manual_seed(0)
            seqs, logps = model.sample(feats, n=3)
            assert torch.allclose(logps.sum(1), _seq_logp(model, feats.repeat_interleave(3, 0), seqs), atol=1e-4)
    _check_sequences(seqs, model.cfg.vocab_size)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_stage_3_trains_the_cnn_of_every_architecture(arch, trained):
    s1, s2, s3 = (load_checkpoint(trained(arch) / f"stage{s}" / "last.pt")[0].backbone.state_dict() for s in (1, 2, 3))
    weights = [k for k in s1 if "num_batches" not in k]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s2[k], s3[k]) for k in weights)


def test_done_when_a_transformer_trains_and_captions_through_the_console_scripts(built_small, synth_small, tmp_path):
    run, video = tmp_path / "R", synth_small / "videos" / "video1.mp4"
    for argv in (["--stage", "1", "--data", str(built_small), "--run", str(run), "--preset", "tiny",
                  "model.arch=transformer", "epochs=1"],
                 ["--stage", "2", "--data", str(built_small), "--run", str(run), "--preset", "tiny"]):
        r = subprocess.run([tool("train"), *argv], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    ckpt = run / "stage2" / "best.pt"
    assert torch.load(ckpt, weights_only=True)["config"]["arch"] == "transformer"
    r = subprocess.run([tool("caption"), str(video), "--ckpt", str(ckpt)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith(f"{video}: ") and r.stdout.count("\n") == 1, (r.stdout, r.stderr)


def test_the_architecture_comparison_runs_at_tiny_scale_and_resumes(built_small, tmp_path):
    """bench/experiments/arch_compare.py (the README's S2VT vs transformer table) end to end on the tiny build."""
    from bench.experiments import arch_compare as bench

    argv = ["--data", str(built_small), "--work", str(tmp_path / "work"), "--seeds", "1", "--preset", "tiny",
            "--out", str(tmp_path / "report.json"), "--quiet", "num_workers=0", "epochs=1"]
    report = bench.main(argv)
    assert [(e["arch"], e["stage"]) for e in report["table"]] == [(a, s) for a in ("s2vt", "transformer") for s in (1, 2, 3)]
    for e in report["table"]:
        assert e["seeds"] == 1 and e["captioner_params"] > 0
        assert all(0 <= e[k]["mean"] <= 1 for k in ("action_acc", "colour_acc", "shape_acc"))
        assert e["CIDEr"]["mean"] >= 0 and e["CIDEr"]["std"] == 0.0
    assert json.loads((tmp_path / "report.json").read_text())["table"] == report["table"]
    table = (tmp_path / "report.md").read_text()
    assert table.count("| s2vt (") == 3 and table.count("| transformer (") == 3
    logs = sorted((tmp_path / "work").glob("seed0/*/stage*/metrics.jsonl"))
    assert len(logs) == 6
    before = [p.stat().st_mtime_ns for p in logs]
    assert bench.main(argv)["rows"] == report["rows"]  # a re-run reads the scored stages back
    assert [p.stat().st_mtime_ns for p in logs] == before
