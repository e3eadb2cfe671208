"""Occlusion evidence (train/evidence.py, ``train eval --evidence N``): a cell replaced by the clip's
temporal median changes nothing where nothing moves, changes the word's log-probability where the
clip moves, and `train eval` puts the maps of its wrong clips in the gallery and in evidence.png,
with where each wrong slot's value came from in error_sources.json."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import torch
from conftest import tool
from PIL import Image

from vidcap.model import create_model, make_config
from vidcap.tokens import EOS
from vidcap.train.evidence import GRID, occlusion_maps


def _model():
    torch.manual_seed(0)
    return create_model(make_config("tiny", 12, pretrained=False))


def test_a_still_clip_has_no_evidence_anywhere_and_a_moving_one_has_some():
    model = _model()
    still = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8).expand(5, -1, -1, -1).clone()
    seq = [5, 7, 9, EOS]
    maps = occlusion_maps(model, still, seq, {"colour": 1, "shape": 2})
    assert set(maps) == {"colour", "shape"} and maps["shape"].shape == (5, GRID, GRID)
    assert all(np.abs(m).max() == 0 for m in maps.values())  # the median of a still clip is the clip
    moving = still.clone()
    for f in range(5):  # a bright square crossing the frame
        moving[f, :, 20:36, 8 + 10 * f : 24 + 10 * f] = 255
    maps = occlusion_maps(model, moving, seq, {"colour": 1})
    assert np.abs(maps["colour"]).max() > 0


def test_train_eval_evidence_draws_the_wrong_clips_maps(tiny_model, built_small, tmp_path):
    """The one-epoch tiny model says "on on on ...", which names no slot; its output layer is tilted
    towards "spins" (the feature-dependent part kept, scaled down) so that it names an action, wrong
    on the clips that do not spin: their maps are drawn."""
    ckpt = torch.load(tiny_model["ckpt"], weights_only=True)
    ckpt["model"]["out.weight"] *= 0.1
    ckpt["model"]["out.bias"][ckpt["vocab"].index("spins")] += 30
    torch.save(ckpt, tmp_path / "spins.pt")
    out = tmp_path / "eval"
    r = subprocess.run([tool("train"), "eval", "--ckpt", str(tmp_path / "spins.pt"), "--data", str(built_small),
                        "--split", "test", "--beam", "1", "--no-meteor", "--evidence", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    sources = json.loads((out / "error_sources.json").read_text())
    assert sources["all"]["action"]["elsewhere"] > 0  # "spin" where no object spins
    assert all(row["wrong"] == row["other_object"] + row["elsewhere"] + row["unnamed"]
               for row in sources["all"].values())
    sheet = Image.open(out / "evidence.png")
    assert sheet.width > 5 * 96 and sheet.height > 96
    assert 1 <= (out / "gallery.html").read_text().count("class='evidence'") <= 2
    bad = subprocess.run([tool("train"), "eval", "--ckpt", str(tiny_model["ckpt"]), "--data", str(built_small),
                          "--evidence", "-1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--evidence -1" in bad.stderr
