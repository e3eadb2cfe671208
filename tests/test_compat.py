"""What users made before the `vidcap.*` namespace still works. The fixture archive
(tests/fixtures/pre_restructure.tar.xz, < 200 KB) holds a pipeline build, a stage-1 run with its
checkpoint, and that checkpoint's model folder, all written by the code of commit 87ef093 (top-level
packages `pipeline`, `model`, `train`, `evalkit`), with what that code said about them: the captions
of two clips, the test predictions, the CNN features and log-probabilities of one clip.
tests/fixtures/make_pre_restructure.py made it; tests/fixtures/README.md says how to make it again.

Here the code of today reads all of it and must say the same: checkpoints and model folders store
architecture names and plain types, never class paths, so the move of every module left them valid."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

import vidcap
from vidcap.model.checkpoint import load_checkpoint
from vidcap.model.folder import load_model_folder
from vidcap.model.registry import ARCHS
from vidcap.shards.layout import Build, DataInfo

FIXTURE = REPO / "tests" / "fixtures" / "pre_restructure.tar.xz"


def _unpacked(tmp_path_factory, archive: Path, name: str) -> Path:
    """A fixture archive's folder `name`, unpacked into a fresh temporary folder."""
    root = tmp_path_factory.mktemp(name)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root / name


@pytest.fixture(scope="module")
def old(tmp_path_factory) -> Path:
    return _unpacked(tmp_path_factory, FIXTURE, "pre_restructure")


@pytest.fixture(scope="module")
def expected(old) -> dict:
    return json.loads((old / "expected.json").read_text())


def _clips(old: Path) -> list[str]:
    return [str(old / "videos" / "video8.mp4"), str(old / "videos" / "video9.mp4")]


def _relative(rows: list[dict], old: Path) -> list[dict]:
    return [{**r, "path": os.path.relpath(r["path"], old)} for r in rows]


def test_the_archive_is_small_and_was_written_by_the_old_code(expected, old):
    assert FIXTURE.stat().st_size < 200 * 1024
    assert expected["commit"] == "87ef093"
    assert sorted(p.name for p in old.iterdir()) == ["data", "expected.json", "expected.npz", "model", "run", "videos"]


def test_the_old_build_reads_verifies_and_gives_its_references(old, expected):
    info = DataInfo.load(str(old / "data"))
    for split in ("train", "val", "test"):
        info.split(split)  # every shard checked against its manifest
    assert Build(str(old / "data")).references("test") == expected["test_references"]
    assert json.loads((old / "data" / "build.json").read_text())["format_version"] == "1.0"


def test_the_old_files_name_the_architecture_and_hold_plain_types(old):
    raw = torch.load(old / "run" / "stage1" / "best.pt", map_location="cpu", weights_only=True)
    config = raw["config"]
    assert config["arch"] == "s2vt" and config["arch"] in ARCHS
    assert all(isinstance(v, (str, int, float, bool, list, tuple, type(None))) for v in config.values())
    assert not [v for v in config.values() if isinstance(v, str) and ("model." in v or "Captioner" in v)]
    folder = json.loads((old / "model" / "config.json").read_text())
    assert folder["architecture"] == "s2vt" and folder["format"] == "vidcap-model"


def test_the_old_model_folder_and_checkpoint_caption_as_they_did(old, expected):
    with vidcap.load(old / "model", workers=1, batch=2) as cap:
        assert _relative([c.row() for c in cap.caption(_clips(old))], old) == expected["rows_model_folder"]
    with vidcap.load(old / "run" / "stage1" / "best.pt", workers=1, batch=1) as cap:
        assert _relative([c.row() for c in cap.caption(_clips(old))], old) == expected["rows_checkpoint"]


def test_the_old_model_computes_the_same_numbers(old):
    saved = np.load(old / "expected.npz")
    model, _ = load_model_folder(old / "model")
    with torch.no_grad():
        feats = model.frame_features(torch.from_numpy(saved["frames"][None]).permute(0, 1, 4, 2, 3))
        logp = model(feats, torch.from_numpy(saved["tokens"][None]))
    np.testing.assert_allclose(feats.numpy(), saved["features"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(logp.numpy(), saved["logprobs"], rtol=0, atol=1e-5)
    ckpt_model, _ = load_checkpoint(old / "run" / "stage1" / "best.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ckpt_model.state_dict().values(),
                                                  strict=True))


def test_the_old_checkpoint_evaluates_exports_and_trains_on(old, expected, tmp_path):
    from vidcap.train.config import make_train_config
    from vidcap.train.evaluate import evaluate_checkpoint
    from vidcap.train.export import export_model
    from vidcap.train.loop import run_stage

    ckpt = old / "run" / "stage1" / "best.pt"
    r = evaluate_checkpoint(str(ckpt), str(old / "data"), "test", 3, str(tmp_path / "eval"), meteor=False)
    assert r["predictions"] == expected["test_predictions"] and r["clips"] == expected["clips"]

    export_model(ckpt, tmp_path / "model", name="from-old")  # the old run folder feeds the model card
    card = (tmp_path / "model" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: vidcap\n") and "| `stage1` | S2VT (step 1" in card
    with vidcap.load(tmp_path / "model", workers=1) as cap:
        assert _relative([c.row() for c in cap.caption(_clips(old))], old) == expected["rows_model_folder"]

    cfg = make_train_config(2, "tiny", ["epochs=1", "num_workers=0"], data=str(old / "data"), run=str(old / "run"))
    result = run_stage(cfg, progress=False)  # stage 2 starts from the old stage 1's best.pt
    assert Path(result["dir"]).name == "stage2" and (old / "run" / "stage2" / "best.pt").exists()
    start = json.loads((old / "run" / "stage2" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["init_from"] == str(ckpt)


def test_the_old_focus_settings_mean_what_older_files_were_trained_with():
    """Files written before ``model.features`` hold ``pool`` and the focus cues' flat settings, and
    older ones lack some of them: what their absence means (registry.LEGACY_FOCUS) is the focus
    entry's default, so an old file and a new one without the setting build the same model."""
    from dataclasses import fields

    from vidcap.model.focus import FocusConfig
    from vidcap.model.registry import LEGACY_FOCUS

    defaults = {f.name: f.default for f in fields(FocusConfig)}
    assert {k: defaults[k] for k in LEGACY_FOCUS} == LEGACY_FOCUS
    # settings born after model.features have no flat spelling (``heads`` would be the transformer's)
    assert set(defaults) - set(LEGACY_FOCUS) == {"heads"} and defaults["heads"] == 0


PRE_FEATURES = REPO / "tests" / "fixtures" / "pre_frame_features.tar.xz"


@pytest.fixture(scope="module")
def pre_features(tmp_path_factory) -> Path:
    return _unpacked(tmp_path_factory, PRE_FEATURES, "pre_frame_features")


@pytest.mark.parametrize("name, features, config", [
    ("focus", "focus", dict(exposure="gain", stabilize="similarity", stabilize_share=0.3, saliency="robust",
                            track=True, scene=False, frame_focus=True, foreground="filled")),
    ("grid3", "grid", dict(side=3)),
    ("transformer-grid", "grid", dict(side=2))])
@pytest.mark.parametrize("kind", ["checkpoint", "model folder"])
def test_files_from_before_the_frame_features_registry_compute_the_same_numbers(pre_features, name, features,
                                                                                config, kind):
    """Checkpoints and model folders written by the code before the registry (commit 425031b:
    ``model.pool`` and flat cue settings; tests/fixtures/make_pre_frame_features.py) load through
    the upgrade path into today's entries and give the same features, log-probabilities and beam."""
    saved = np.load(pre_features / "expected.npz")
    if kind == "checkpoint":
        model, _ = load_checkpoint(pre_features / f"{name}.pt")
    else:
        model, _ = load_model_folder(pre_features / name)
    assert model.cfg.features == features and {k: model.cfg.features_config[k] for k in config} == config
    x = torch.from_numpy(np.load(pre_features / "frames.npy")[None]).permute(0, 1, 4, 2, 3)
    with torch.no_grad():
        feats = model.frame_features(x)
        np.testing.assert_allclose(feats.numpy(), saved[f"{name}/features"], rtol=0, atol=1e-5)
        logp = model(feats, torch.tensor([[5, 6, 7, 2]]))
        np.testing.assert_allclose(logp.numpy(), saved[f"{name}/logprobs"], rtol=0, atol=1e-5)
        assert torch.equal(model.beam(feats, 3, max_len=8), torch.from_numpy(saved[f"{name}/beam"]))
