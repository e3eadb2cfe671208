"""Stages as recipes: each Table 3 row freezes and weights what it says, recipes are named apart from
the architectures (the old name `s2vt` of `xe` still accepted), and `train ablate` is the table as one
command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import tool

from vidcap.errors import UserError
from vidcap.model import ARCHS
from vidcap.train.ablate import ablate
from vidcap.train.config import make_train_config
from vidcap.train.export import _stage_lines
from vidcap.train.loop import Trainer, run_stage
from vidcap.train.recipes import RECIPES, RENAMED, STAGES, TABLE3_ORDER, get_recipe, prefix_chain

# The paper's Table 3, row by row: (CNN trained, XE weight, RL weight, attribute weight, M, starts from).
TABLE3 = {
    "xe": (False, 1.0, 0.0, 0.0, None, None),
    "rfc": (False, 0.0, 1.0, 0.0, 1, "xe"),
    "rfc+": (False, 0.0, 1.0, 0.0, 8, "xe"),
    "e2e-xe": (True, 1.0, 0.0, 0.0, None, "xe"),
    "e2e-att-xe": (True, 0.95, 0.0, 0.05, None, "xe"),
    "e2e-no-attr": (True, 0.0, 1.0, 0.0, 8, "rfc+"),
    "e2e-scratch": (True, 1.0, 0.0, 0.0, None, None),
    "e2e": (True, 0.0, 0.95, 0.05, 8, "rfc+"),
}


def test_every_table3_row_is_a_recipe_with_the_papers_settings():
    assert list(TABLE3_ORDER) == list(TABLE3) and set(RECIPES) == set(TABLE3)
    assert STAGES == {1: "xe", 2: "rfc+", 3: "e2e"}
    for name, (cnn, xe, rl, attr, m, init) in TABLE3.items():
        cfg = make_train_config(name, "paper", [])
        assert (cfg.train_cnn, cfg.xe_weight, cfg.rl_weight, cfg.attr_weight) == (cnn, xe, rl, attr), name
        assert cfg.feature_cache == (not cnn), name
        assert cfg.cnn_lr_scale == 1.0, name  # the paper trains the CNN at the captioner's lr
        if m is not None:
            assert cfg.samples == m, name
        assert RECIPES[name].init == init, name
    assert prefix_chain("e2e") == ["xe", "rfc+", "e2e"]
    # the paper's optimiser settings for its three stages
    assert [make_train_config(s, "paper", []).lr for s in (1, 2, 3)] == [1e-4, 1e-6, 1e-6]
    assert [make_train_config(s, "paper", []).batch_size for s in (1, 2, 3)] == [64, 256, 16]


def test_recipes_are_named_apart_from_architectures_and_old_names_still_work(tmp_path):
    assert not set(RECIPES) & set(ARCHS), "a recipe shares an architecture's name"
    assert RENAMED == {"s2vt": "xe"}
    assert get_recipe("s2vt") is RECIPES["xe"]
    cfg = make_train_config("s2vt", "tiny", [])
    assert cfg.recipe == "xe" and cfg.recipe_dir == "stage1"  # the new name is what is written
    r = subprocess.run([tool("train"), "--recipe", "s2vt", "--data", str(tmp_path / "none"), "--run",
                        str(tmp_path / "run"), "--preset", "tiny"], capture_output=True, text=True, timeout=120)
    assert "invalid choice" not in r.stderr and str(tmp_path / "none") in r.stderr  # got past the parser
    with pytest.raises(UserError, match=r"^--rows: unknown bogus;"):  # s2vt is xe's row, bogus is nothing
        ablate(str(tmp_path / "none"), str(tmp_path / "abl"), "tiny", 1, rows=["s2vt", "bogus"], progress=False)
    # a run folder written before the rename: the model card's stage table still finds the recipe
    row = _stage_lines([{"dir": Path("stage1"), "recipe": "s2vt", "config": {}, "epochs": []}])[2]
    assert row.startswith(f"| `stage1` | {RECIPES['xe'].title} |")


@pytest.fixture(scope="module")
def xe_ckpt(built_small, tmp_path_factory):
    run = tmp_path_factory.mktemp("recipes")
    run_stage(make_train_config("xe", "tiny", ["num_workers=0", "epochs=1"], data=str(built_small), run=str(run)),
              progress=False)
    return run / "stage1" / "best.pt"


@pytest.mark.parametrize("name", TABLE3_ORDER)
def test_one_step_of_each_recipe_trains_what_its_row_says(name, built_small, xe_ckpt, tmp_path):
    cnn, xe, rl, attr, _, init = TABLE3[name]
    cfg = make_train_config(name, "tiny", ["num_workers=0", "batch_size=4"], data=str(built_small), run=str(tmp_path),
                            init=str(xe_ckpt) if init else None)
    t = Trainer(cfg, progress=False)
    assert all(p.requires_grad == cnn for p in t.model.backbone.parameters())
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    stats = t.step(next(iter(t.epoch_batches(0))), 0)
    assert ("xe_loss" in stats, "rl_loss" in stats, "attr_loss" in stats) == (bool(xe), bool(rl), bool(attr))
    expected = xe * stats.get("xe_loss", 0) + rl * stats.get("rl_loss", 0) + attr * stats.get("attr_loss", 0)
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)
    after = t.model.state_dict()
    cnn_moved = any(not torch.equal(before[k], after[k]) for k in after if k.startswith("backbone.")
                    and "num_batches" not in k)
    assert cnn_moved == cnn
    head_moved = not torch.equal(before["attr_head.weight"], after["attr_head.weight"])
    assert head_moved == bool(attr)  # only the attribute loss trains the attribute head


@pytest.mark.parametrize("scale", [1.0, 0.01])
def test_cnn_lr_scale_sets_the_cnns_step(scale, built_small, xe_ckpt, tmp_path):
    """Adam's first step moves every parameter that has a gradient by its group's lr: the captioner
    by lr, the CNN by lr * cnn_lr_scale (one group, as before the option, when the scale is 1)."""
    cfg = make_train_config("e2e-xe", "tiny", ["num_workers=0", "batch_size=4", f"cnn_lr_scale={scale}"],
                            data=str(built_small), run=str(tmp_path), init=str(xe_ckpt))
    t = Trainer(cfg, progress=False)
    assert len(t.opt.param_groups) == (1 if scale == 1.0 else 2)
    before = {k: v.clone() for k, v in t.model.named_parameters()}
    t.step(next(iter(t.epoch_batches(0))), 0)
    moved = {k: (v - before[k]).abs().max().item() for k, v in t.model.named_parameters()}
    cnn = max(v for k, v in moved.items() if k.startswith("backbone."))
    captioner = max(v for k, v in moved.items() if not k.startswith("backbone."))
    assert captioner == pytest.approx(cfg.lr, rel=0.05)  # float32 rounding of p - step
    assert cnn == pytest.approx(cfg.lr * scale, rel=0.05)


def test_resume_with_another_cnn_lr_scale_is_one_line(built_small, xe_ckpt, tmp_path):
    """A last.pt saved with one optimiser group (cnn_lr_scale=1) cannot take two: one line saying which setting."""
    args = ["num_workers=0", "batch_size=4", "max_clips=8", "epochs=1"]
    run_stage(make_train_config("e2e-xe", "tiny", args, data=str(built_small), run=str(tmp_path), init=str(xe_ckpt)),
              progress=False)
    cfg = make_train_config("e2e-xe", "tiny", [*args, "cnn_lr_scale=0.1"], data=str(built_small), run=str(tmp_path),
                            resume=True)
    with pytest.raises(UserError, match=r"last.pt: saved with 1 optimiser group\(s\), these settings make 2 "
                                        r"\(cnn_lr_scale=0.1\); resume with the cnn_lr_scale it was trained with \(1\)"):
        Trainer(cfg, progress=False)


def test_the_cnns_rate_is_logged_and_a_resume_keeps_the_schedule(built_small, xe_ckpt, tmp_path):
    """Two groups: each step record carries both rates. A last.pt trained on a cosine cannot be resumed
    at a constant rate (or the other way): one line naming the schedule it was trained with."""
    args = ["num_workers=0", "batch_size=4", "max_clips=8", "epochs=1", "cnn_lr_scale=0.1"]
    cfg = make_train_config("e2e-xe", "tiny", [*args, "lr_schedule=cosine"], data=str(built_small), run=str(tmp_path),
                            init=str(xe_ckpt))
    run_stage(cfg, progress=False)
    records = [json.loads(x) for x in (Path(cfg.run) / "e2e-xe" / "metrics.jsonl").read_text().splitlines()]
    first = next(x for x in records if x["event"] == "step")
    assert first["lr"] == pytest.approx(cfg.lr) and first["cnn_lr"] == pytest.approx(cfg.lr * 0.1)
    again = make_train_config("e2e-xe", "tiny", args, data=str(built_small), run=str(tmp_path), resume=True)
    with pytest.raises(UserError, match=r"last.pt: trained with lr_schedule=cosine, these settings say constant; "
                                        r"resume with lr_schedule=cosine$"):
        Trainer(again, progress=False)


def test_train_ablate_writes_the_eight_rows_and_resumes(built_small, tmp_path):
    cmd = [tool("train"), "ablate", "--data", str(built_small), "--run", str(tmp_path / "abl"), "--preset", "tiny",
           "--seeds", "1", "--quiet", "num_workers=0"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    table = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert [row["recipe"] for row in table["rows"]] == list(TABLE3_ORDER)
    for row in table["rows"]:
        assert {"Bleu_4", "ROUGE_L", "METEOR", "CIDEr", "action_acc", "colour_acc", "shape_acc"} <= set(row)
        assert row["CIDEr"]["std"] == 0.0 and len(row["CIDEr"]["values"]) == 1
    md = (tmp_path / "abl" / "ablation.md").read_text()
    assert md.count("\n| ") == 9 and "| 0.750 |" in md and "| 0.816 |" in md and "| 0.865 |" in md
    # prefixes are trained once: one stage1 and one stage2 (rfc+) directory per seed
    dirs = sorted(p.name for p in (tmp_path / "abl" / "seed0").iterdir() if p.is_dir() and p.name != "features")
    assert dirs == sorted(RECIPES[n].dir for n in TABLE3_ORDER)
    # a re-run reads every row back instead of training again
    mtime = (tmp_path / "abl" / "seed0" / "stage3" / "best.pt").stat().st_mtime_ns
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "abl" / "seed0" / "stage3" / "best.pt").stat().st_mtime_ns == mtime
    assert json.loads((tmp_path / "abl" / "ablation.json").read_text())["rows"] == table["rows"]
