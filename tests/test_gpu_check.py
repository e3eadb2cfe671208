"""bench/acceptance/gpu_check.py, the one prepared GPU check, runs here as its --dry-run (the
same checks on the CPU at tiny sizes), so the script a GPU session runs in its few minutes has run
in CI; and its misconfiguration paths are the one-line exit 2, not a half-written report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, one_line_error

MODULE = "bench.acceptance.gpu_check"
CHECKS = ["environment", "data", "dali_decode", "stage1", "stage2", "stage3", "process_group", "dali_epoch"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", MODULE, *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV, cwd=REPO)


def _dali_installed() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_dry_run_passes_every_check_it_runs(built_small, tmp_path):
    out = tmp_path / "out"
    r = _run("--dry-run", "--data", str(built_small), "--work", str(tmp_path / "work"), "--out", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "gpu_report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert [c["name"] for c in report["checks"]] == CHECKS and [c["n"] for c in report["checks"]] == list(range(1, 9))
    assert report["dry_run"] and report["device"] == "cpu" and report["finished"] and report["passed"]
    for c in report["checks"]:
        assert c["status"] in ("PASS", "SKIP"), c
        assert c["status"] == "SKIP" or c["detail"], c
        assert c["seconds"] >= 0
    assert checks["environment"]["status"] == "SKIP"  # the GPU is not checked in a dry run, but it is reported
    assert checks["environment"]["values"]["torch"] == torch.__version__
    ran = {name for name, c in checks.items() if c["status"] == "PASS"}
    assert {"data", "stage1", "stage2", "stage3", "process_group"} <= ran
    assert ({"dali_decode", "dali_epoch"} <= ran) == _dali_installed()
    if _dali_installed():
        d = checks["dali_decode"]["values"]
        assert d["device"] == "cpu" and d["mean_abs_diff"] <= 2 and d["max_abs_diff"] <= 64 and d["images"] > 0
        assert checks["dali_epoch"]["values"]["steps"] >= 1
    for stage in ("stage1", "stage2", "stage3"):
        v = checks[stage]["values"]
        assert len(v["fp32"]["loss"]) == len(v["bf16"]["loss"]) == v["steps"] == 3
        assert v["fp32"]["steps_per_s"] > 0 and v["bf16"]["clips_per_s"] > 0
        assert v["fp32"]["loss"] != v["bf16"]["loss"]  # bf16 autocast really ran on the CPU (train/step.py)
    assert checks["stage1"]["values"]["loss_rel_diff"] < 0.05  # cross-entropy: no sampling, only rounding
    assert "sampling_noise_rel_diff" in checks["stage2"]["values"]
    assert checks["stage3"]["values"]["attr_loss_first_step_rel_diff"] < 0.05
    v3 = checks["stage3"]["values"]  # issue 39: stage 3 with the memory options, the plain step's loss
    assert v3["memory_options"] == ["grad_checkpoint=true", "accumulate=2"]
    assert len(v3["fp32_options"]["loss"]) == 3 and v3["options_first_step_rel_diff"] < 1e-3
    assert "with grad_checkpoint=true accumulate=2: first loss" in checks["stage3"]["detail"]
    assert checks["process_group"]["values"]["backend"] == "gloo"
    md = (out / "gpu_report.md").read_text()
    assert md.startswith("# GPU check: PASS") and all(f"| {name} |" in md for name in CHECKS)
    assert "gpu_check: PASS" in r.stdout


def test_without_cuda_and_without_dry_run_it_is_one_line_and_exit_2(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would run")
    r = _run("--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), timeout=120)
    assert one_line_error(r, "gpu_check").startswith("CUDA is not available")
    assert "--dry-run" in r.stderr and not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_a_bad_override_or_data_folder_is_one_line_and_exit_2(tmp_path):
    r = _run("--dry-run", "--out", str(tmp_path / "out"), "epoch=3", timeout=120)
    assert "unknown key 'epoch'" in one_line_error(r, "gpu_check")
    r = _run("--dry-run", "--out", str(tmp_path / "out"), "--data", str(tmp_path), timeout=120)
    assert "not a pipeline build" in one_line_error(r, "gpu_check")
    assert not (tmp_path / "out").exists()


def test_a_spent_budget_fails_what_it_did_not_run(tmp_path):
    """The run must fit a lease: checks left when the budget is gone are FAILs that say so."""
    from bench.acceptance import gpu_check as gc

    s = gc.Settings(dry_run=True, device="cpu", preset="tiny", overrides=[], steps=2, clips=10, data=None,
                    work=tmp_path / "work", out=tmp_path / "out", budget_s=0.0, workers=1)
    report = gc.run_all(s)
    assert not report["passed"] and [c["status"] for c in report["checks"]] == ["FAIL"] * len(CHECKS)
    assert all(c["detail"].startswith("not run: the budget of 0 s was spent") for c in report["checks"])
    assert json.loads(Path(tmp_path / "out" / "gpu_report.json").read_text())["passed"] is False
