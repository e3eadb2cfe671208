"""`train export` writes a model folder (config.json, model.safetensors, vocab.json,
README.md) that loads without any pickle, captions and evaluates exactly as its checkpoint, and
whose every damaged or hostile file is one error naming the file."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, tool

from vidcap.model.checkpoint import load_checkpoint
from vidcap.model.folder import ModelFolderError, load_model_folder
from vidcap.model.registry import ARCHS
from vidcap.train.evaluate import evaluate_checkpoint
from vidcap.train.export import export_model


def test_export_writes_the_four_files_and_the_config_describes_the_model(tiny_model):
    folder = tiny_model["model"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "vocab.json"]
    config = json.loads((folder / "config.json").read_text())
    model, raw = load_checkpoint(tiny_model["ckpt"])
    assert config["architecture"] == "s2vt" and config["format"] == "vidcap-model"
    assert config["vocab_size"] == len(raw["vocab"]) == len(json.loads((folder / "vocab.json").read_text())["itos"])
    assert config["preprocessing"] == {"n_frames": 5, "image_size": 64, "pixel_mean": list(model.cfg.pixel_mean),
                                       "pixel_std": list(model.cfg.pixel_std), "sampling": "segment_centres"}
    assert config["model"]["hidden"] == model.cfg.hidden and config["model"]["backbone"] == "tiny"
    assert not {"pretrained", "backbone_weights"} & set(config["model"])  # the weights are the folder's own


def test_loading_a_folder_reads_no_pickle_and_gives_the_checkpoints_model(tiny_model, monkeypatch):
    ref, raw = load_checkpoint(tiny_model["ckpt"])

    def refuse(*args, **kwargs):
        raise AssertionError("a model folder must load without unpickling anything")

    for target, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(target, name, refuse)
    model, folder = load_model_folder(tiny_model["model"])
    monkeypatch.undo()
    assert folder.vocab == raw["vocab"] and folder.attributes == raw["attributes"]
    mine, theirs = ref.state_dict(), model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    frames = torch.randint(0, 256, (2, 5, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(ref.beam(ref.frame_features(frames), 3), model.beam(model.frame_features(frames), 3))


def test_caption_and_train_eval_take_the_folder_and_agree_with_the_checkpoint(tiny_model, built_small, synth_small,
                                                                                 tmp_path):
    clip = synth_small / "videos" / "video1.mp4"
    out = {}
    for flag, src in (("--ckpt", tiny_model["ckpt"]), ("--model", tiny_model["model"])):
        r = subprocess.run([tool("caption"), str(clip), flag, str(src)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.startswith(f"{clip}: "), r.stderr[-2000:]
        out[flag] = r.stdout
    assert out["--ckpt"] == out["--model"]
    by_ckpt = evaluate_checkpoint(str(tiny_model["ckpt"]), str(built_small), "test", 1, str(tmp_path / "a"), meteor=False)
    by_folder = evaluate_checkpoint(None, str(built_small), "test", 1, str(tmp_path / "b"), meteor=False,
                                    model_dir=str(tiny_model["model"]))
    assert by_folder["predictions"] == by_ckpt["predictions"] and by_folder["metrics"] == by_ckpt["metrics"]
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["checkpoint"] == str(tiny_model["model"])


def test_the_model_card_reports_test_metrics_only_where_the_run_has_them(tiny_model, built_small, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_model["run"], run)
    ckpt = run / "stage1" / "best.pt"
    export_model(ckpt, tmp_path / "m1")
    card = (tmp_path / "m1" / "README.md").read_text()
    meta, card = _front_matter(card)
    assert meta == {"library_name": "vidcap", "pipeline_tag": "video-text-to-text", "license": "mit",
                    "tags": ["vidcap", "video-captioning", "video-to-text", "s2vt", "tiny"]}  # no numbers: not evaluated
    assert "Not evaluated" in card and "| `stage1` | S2VT (step 1" in card and "| tiny |" in card
    assert "clips train 17, val 2, test 5" in card and "built-in synthetic dataset" in card
    r = evaluate_checkpoint(str(ckpt), str(built_small), "test", 1, meteor=False)  # RUN/stage1/eval-test-beam1/
    export_model(ckpt, tmp_path / "m2", name="tiny-s2vt")
    meta, card = _front_matter((tmp_path / "m2" / "README.md").read_text())
    assert card.startswith("# tiny-s2vt\n") and "Not evaluated" not in card
    assert meta["metrics"] == ["bleu", "rouge", "cider", "accuracy", "map"]  # evaluated without METEOR
    (result,) = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == "tiny-s2vt" and result["task"]["type"] == "video-text-to-text"
    assert result["dataset"] == {"name": "vidcap built-in synthetic dataset", "type": "msrvtt", "split": "test"}
    values = {x["name"]: x["value"] for x in result["metrics"]}
    assert values["CIDEr (beam 1)"] == round(100 * r["metrics"]["CIDEr"], 2)
    assert values["action % (beam 1)"] == round(100 * r["metrics"]["action_acc"], 2)
    row = next(line for line in card.splitlines() if line.startswith("| beam 1 |"))
    m = r["metrics"]
    assert f"| {100 * m['CIDEr']:.1f} | {100 * m['action_acc']:.1f}% | {100 * m['colour_acc']:.1f}% |" in row
    assert f"| {r['clips']} |" in row


def _front_matter(card: str) -> tuple[dict, str]:
    """A model card's YAML front matter (read by a YAML parser, as a hub does) and the card after it."""
    import yaml

    assert card.startswith("---\n")
    head, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body.lstrip("\n")


def test_export_refuses_to_overwrite_what_is_not_a_model_folder(tiny_model, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    base = [tool("train"), "export", "--ckpt", str(tiny_model["ckpt"]), "--out"]
    r = subprocess.run([*base, str(tmp_path / "notes"), "--overwrite"], capture_output=True, text=True, timeout=120)
    assert "not a vidcap model folder (it holds keep.txt)" in one_line_error(r, "train export")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


# ---- hostile and damaged folders ------------------------------------------------------------------------
def _config(folder: Path, change) -> None:
    doc = json.loads((folder / "config.json").read_text())
    change(doc)
    (folder / "config.json").write_text(json.dumps(doc))


def _set(section: str, key: str, value):
    return lambda doc: doc[section].__setitem__(key, value)


def _truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _other_weights(folder: Path) -> None:  # a bigger model's tensors under the same config
    from safetensors.torch import save_file

    from vidcap.model.registry import create_model, make_config

    m = create_model(make_config("tiny", json.loads((folder / "config.json").read_text())["vocab_size"], hidden=96))
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(folder / "model.safetensors"))


HOSTILE = {
    "unknown architecture": (lambda f: _config(f, lambda d: d.__setitem__("architecture", "gpt-9")),
                             "config.json", "architecture 'gpt-9' is not one this vidcap knows"),
    "absurd size": (lambda f: _config(f, _set("model", "hidden", 10 ** 12)),
                    "config.json", "model.hidden: 1000000000000 is outside 0..1048576"),
    "large but allowed size": (lambda f: _config(f, _set("model", "hidden", 1 << 20)),
                               "model.safetensors", "its tensors do not match config.json"),
    "wrong type": (lambda f: _config(f, _set("model", "embed", "32")), "config.json", "model.embed: '32' is not an int"),
    "unknown setting": (lambda f: _config(f, _set("model", "exec", "rm -rf /")),
                        "config.json", "model.'exec' is not a setting of architecture s2vt"),
    "nested JSON": (lambda f: (f / "config.json").write_text("[" * 200_000 + "]" * 200_000),
                    "config.json", "invalid JSON: nested too deeply"),
    "not JSON": (lambda f: (f / "config.json").write_bytes(b"\xff\xfe"), "config.json", "not UTF-8 text"),
    "huge config": (lambda f: (f / "config.json").write_text(" " * (2 << 20)), "config.json", "larger than 1 MB"),
    "bad std": (lambda f: _config(f, _set("preprocessing", "pixel_std", [0, 1, 1])),
                "config.json", "preprocessing.pixel_std: must be > 0"),
    "vocab size": (lambda f: _config(f, lambda d: d.__setitem__("vocab_size", d["vocab_size"] + 1)),
                   "vocab.json", "words, but config.json says vocab_size"),
    "missing weights": (lambda f: (f / "model.safetensors").unlink(), "model.safetensors", "missing"),
    "truncated weights": (_truncate, "model.safetensors", "not a readable safetensors file"),
    "pickle as weights": (lambda f: shutil.copy(f.parent / "ckpt.pt", f / "model.safetensors"),
                          "model.safetensors", "not a readable safetensors file"),
    "shape mismatch": (_other_weights, "model.safetensors", "its tensors do not match config.json"),
    "missing vocab": (lambda f: (f / "vocab.json").unlink(), "vocab.json", "missing"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_damaged_or_hostile_folder_is_one_error_naming_the_file(tiny_model, tmp_path, case):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model["model"], folder)
    shutil.copy(tiny_model["ckpt"], tmp_path / "ckpt.pt")
    damage, file, message = HOSTILE[case]
    damage(folder)
    with pytest.raises(ModelFolderError) as e:
        load_model_folder(folder)
    text = str(e.value)
    assert text.startswith(f"{folder / file}: ") and message in text and "\n" not in text, text


def test_the_console_scripts_print_a_bad_folder_as_one_line(tiny_model, built_small, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model["model"], folder)
    _config(folder, lambda d: d.__setitem__("architecture", {"$ref": "x"}))
    expect = f"{folder / 'config.json'}: architecture {{'$ref': 'x'}} is not one this vidcap knows ({', '.join(sorted(ARCHS))})"
    r = subprocess.run([tool("caption"), "x.mp4", "--model", str(folder)], capture_output=True, text=True, timeout=120)
    assert one_line_error(r, "caption") == expect
    r = subprocess.run([tool("train"), "eval", "--model", str(tmp_path / "nowhere"), "--data", str(built_small)],
                       capture_output=True, text=True, timeout=120)
    assert one_line_error(r, "train eval") == f"{tmp_path / 'nowhere'}: model folder not found"
