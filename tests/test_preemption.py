"""Step checkpoints and preemption. A real `train` process is stopped mid-epoch
(SIGTERM, SIGINT, SIGKILL after a step checkpoint); `--resume` reaches the very weights of the
uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import tool

from vidcap.model import S2VTCaptioner, make_config, save_checkpoint
from vidcap.shards.layout import DataInfo

# Stage 3 from a fresh tiny model: dropout, caption sampling, the CNN trained, frames streamed by 2
# DataLoader workers -- every source of randomness and order a resume must reproduce -- and a cosine
# learning rate, which a resumed run must continue where it stopped. 9 batches an epoch.
OVERRIDES = ["epochs=2", "batch_size=2", "num_workers=2", "eval_every=9", "shuffle_buffer=4", "lr_schedule=cosine"]


@pytest.fixture(scope="module")
def init_ckpt(built_small, tmp_path_factory) -> Path:
    info = DataInfo.load(built_small)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("init") / "init.pt"
    save_checkpoint(path, S2VTCaptioner(make_config("tiny", len(info.itos), n_attributes=len(info.attributes))),
                    info.itos, info.attributes)
    return path


def train(built_small, run: Path, init: Path, *extra: str) -> list[str]:
    flags = [x for x in extra if x.startswith("--")]
    return [tool("train"), "--stage", "3", "--preset", "tiny", "--quiet", "--data", str(built_small), "--run", str(run),
            "--init", str(init), *flags, *OVERRIDES, *[x for x in extra if x not in flags]]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def steps(run: Path) -> list[dict]:
    lines = (run / "stage3" / "metrics.jsonl").read_text().splitlines() if (run / "stage3" / "metrics.jsonl").exists() else []
    return [r for r in map(json.loads, lines) if r["event"] == "step"]


def stop_after(cmd: list[str], run: Path, n_steps: int, sig: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.time() + 180
    while time.time() < deadline and len(steps(run)) < n_steps and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=180)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def uninterrupted(built_small, init_ckpt, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("whole")
    r = subprocess.run(train(built_small, run, init_ckpt), capture_output=True, text=True, timeout=600, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def assert_same_run(run: Path, ref: Path) -> None:
    a = torch.load(run / "stage3" / "last.pt", weights_only=True)
    b = torch.load(ref / "stage3" / "last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [(s["step"], s["loss"], s["lr"]) for s in steps(run)] == [(s["step"], s["loss"], s["lr"]) for s in steps(ref)]
    assert a["extra"]["history"][-1]["val_CIDEr"] == b["extra"]["history"][-1]["val_CIDEr"]


def test_sigterm_mid_epoch_saves_and_resume_is_bit_exact(built_small, init_ckpt, uninterrupted, tmp_path):
    r = stop_after(train(built_small, tmp_path, init_ckpt, "save_every=0"), tmp_path, 3, signal.SIGTERM)
    assert r.returncode == 143, r.stderr[-3000:]
    pos = torch.load(tmp_path / "stage3" / "last.pt", weights_only=True)["extra"]["position"]
    assert pos["epoch"] == 0 and 3 <= pos["batch"] < 9 and pos["step"] == pos["batch"], pos
    assert r.stderr.strip().splitlines()[-1] == (
        f"train: stopped by SIGTERM in epoch 1 after {pos['batch']} of 9 batches (step {pos['step']}); "
        f"{tmp_path / 'stage3' / 'last.pt'} saved: continue with --resume")
    r = subprocess.run(train(built_small, tmp_path, init_ckpt, "--resume"), capture_output=True, text=True,
                       timeout=600, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(tmp_path, uninterrupted)


def test_sigkill_after_a_step_checkpoint_resumes_from_it(built_small, init_ckpt, uninterrupted, tmp_path):
    """No handler runs: the run continues from the last step checkpoint, and the steps it logged
    after that checkpoint are dropped from metrics.jsonl, not logged twice."""
    r = stop_after(train(built_small, tmp_path, init_ckpt, "save_every=4"), tmp_path, 6, signal.SIGKILL)
    assert r.returncode == -signal.SIGKILL
    pos = torch.load(tmp_path / "stage3" / "last.pt", weights_only=True)["extra"]["position"]
    assert pos["step"] % 4 == 0 and pos["step"] >= 4 and len(steps(tmp_path)) > pos["step"], pos
    r = subprocess.run(train(built_small, tmp_path, init_ckpt, "--resume", "save_every=4"), capture_output=True,
                       text=True, timeout=600, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert [s["step"] for s in steps(tmp_path)] == list(range(1, 19))
    assert_same_run(tmp_path, uninterrupted)


def test_sigint_exits_130_after_saving(built_small, init_ckpt, tmp_path):
    r = stop_after(train(built_small, tmp_path, init_ckpt, "save_every=0"), tmp_path, 2, signal.SIGINT)
    assert r.returncode == 130, r.stderr[-3000:]
    assert "train: stopped by SIGINT in epoch " in r.stderr and "Traceback" not in r.stderr
    assert torch.load(tmp_path / "stage3" / "last.pt", weights_only=True)["extra"]["position"]["step"] >= 2
