"""`train export --ckpt CKPT --out DIR`: a checkpoint becomes a model folder (model/folder.py owns
its format) with a model card, README.md, written from what the run folder recorded.

The card is for someone who did not train the model: what it is, how to use it, what data it saw,
which stages made it, and how good it is on the test split -- the metrics and the grounded
accuracies of ``train eval`` (``RUN/stageN/eval-test-beamB/metrics.json`` of the same checkpoint),
or "not evaluated" where that file is absent. Nothing is guessed: a number the run folder does not
hold is not in the card. It opens with the YAML front matter model hubs read (Hugging Face's model
card metadata: ``library_name``, ``pipeline_tag``, ``license``, ``tags``, ``metrics`` and, where the
test split was evaluated, a ``model-index`` with those numbers), so the folder can be uploaded as it is.

Nothing is written to ``--out`` before the model is known good: the checkpoint is checked as every
loader checks it (weights against config, vocabulary against the output layer and the special
tokens), the folder is written into a temporary folder beside ``--out``, read back there through
``model.folder.load_model_folder`` and compared tensor by tensor, and only then are its files
renamed into ``--out``, config.json last (a folder without it is no model folder). A failure at
any point leaves ``--out`` as it was and no temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from vidcap.atomic import check_replaceable, write_bytes_atomic
from vidcap.errors import UserError
from vidcap.evalkit.metric_names import MODEL_CARD, OBJECT_SLOTS, label, metric
from vidcap.model.base import VideoCaptioner
from vidcap.model.checkpoint import load_checkpoint
from vidcap.model.folder import (
    CARD,
    CONFIG,
    FORMAT,
    VOCAB,
    WEIGHTS,
    load_model_folder,
    model_folder_files,
)
from vidcap.owned import check_ours, resolve_out
from vidcap.shards.layout import Build
from vidcap.train.recipes import RECIPES, recipe_name
from vidcap.train.run_folder import StageFolder, stage_of

ARCH_TEXT = {"s2vt": "S2VT (the paper's: CNN -> FC -> two-layer LSTM)",
             "transformer": "a transformer encoder-decoder over the frames' CNN features"}
TEST_KEYS = tuple((k, label(k)) for k in MODEL_CARD)  # the test row's columns (evalkit/metric_names.py)


def is_vidcap_model_folder(out: Path) -> bool:
    """A model folder `train export` wrote: its config.json says ``"format": "vidcap-model"``. That
    file is the folder's marker; the files beside it that are not the model's are never touched
    (export replaces only its four files), so a folder with a user's notes added stays whole."""
    try:
        with open(out / CONFIG, "rb") as f:
            doc = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def export_model(ckpt: str | Path, out: str | Path, name: str | None = None, overwrite: bool = False) -> dict:
    """Write the model folder of `ckpt` to `out`; {dir, name, bytes}."""
    ckpt, out = Path(ckpt), resolve_out(out)
    model, raw = load_checkpoint(ckpt)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out}: not empty; --overwrite replaces a model folder there")
        check_ours(out, "train export", "a vidcap model folder", is_vidcap_model_folder)
        for fname in (WEIGHTS, VOCAB, CARD, CONFIG):  # only regular files are replaced, never a folder or device
            check_replaceable(out / fname)
    name = name or f"{ckpt.parent.parent.name}-{ckpt.parent.name}-{ckpt.stem}".strip("-")
    files = model_folder_files(model, raw["vocab"], raw["attributes"], name)
    files[CARD] = model_card(ckpt, model, raw, name).encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for fname in (WEIGHTS, VOCAB, CARD, CONFIG):
            try:
                write_bytes_atomic(stage / fname, files[fname])
            except OSError as e:  # a full disk: name the file the user asked for, not the temporary one
                raise OSError(e.errno, e.strerror, str(out / fname)) from None
        back, _ = load_model_folder(stage)
        mine, theirs = model.state_dict(), back.state_dict()
        if mine.keys() != theirs.keys() or not all(torch.equal(mine[k], theirs[k]) for k in mine):
            raise RuntimeError(f"{out}: the exported weights read back differently")  # a bug, not a user error
        out.mkdir(exist_ok=True)
        (out / CONFIG).unlink(missing_ok=True)  # an overwritten folder is no model folder until it is whole again
        for fname in (WEIGHTS, VOCAB, CARD, CONFIG):
            os.replace(stage / fname, out / fname)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"dir": str(out), "name": name, "bytes": sum(len(b) for b in files.values())}


# ---- the model card -------------------------------------------------------------------------------
def model_card(ckpt: Path, model: VideoCaptioner, raw: dict, name: str) -> str:
    """README.md of the folder: front matter, use, model, data, training stages, test metrics, limitations."""
    cfg, counts = model.cfg, model.parameter_counts()
    stages = training_stages(ckpt, raw["extra"])
    data = data_summary(stages[-1]["dir"], stages[-1]["config"]) if stages else None
    lines = [*front_matter(name, cfg.arch, cfg.backbone, data, _test_evals(ckpt)),
             f"# {name}", "",
             f"A video captioner trained with vidcap, the method of Li & Gong (WACV 2019, arXiv 1803.07950): "
             f"it reads {cfg.n_frames} frames of a clip and writes one English sentence. Architecture: "
             f"{ARCH_TEXT.get(cfg.arch, cfg.arch)}. Exported by `train export` from `{ckpt}`.", "",
             "## Use", "", "```bash",
             "caption clip.mp4 --model THIS_FOLDER                      # one caption",
             "caption videos/ --model THIS_FOLDER --jsonl caps.jsonl    # a folder, one JSON row per file",
             "caption serve --model THIS_FOLDER                         # http://127.0.0.1:8000/", "```", "",
             "```python", "import vidcap", "", 'vidcap.load("THIS_FOLDER").caption("clip.mp4")', "```", "",
             "Loading reads `config.json`, `vocab.json` and `model.safetensors`: no pickle, no code.", "",
             "## Model", "", "| setting | value |", "|---|---|",
             f"| architecture | `{cfg.arch}` |",
             f"| backbone | `{cfg.backbone}` ({'trained end to end' if _cnn_trained(stages) else 'frozen'}) |",
             f"| parameters | {counts['total'] / 1e6:.2f} M ({counts['backbone'] / 1e6:.2f} M in the CNN) |",
             f"| frames per clip | {cfg.n_frames}, at the centres of equal segments |",
             f"| frame size | {cfg.image_size} x {cfg.image_size} RGB, (x/255 - mean) / std, mean "
             f"{_floats(cfg.pixel_mean)}, std {_floats(cfg.pixel_std)} |",
             f"| vocabulary | {len(raw['vocab'])} words (4 special) |",
             f"| attribute head | {cfg.n_attributes} outputs |",
             f"| settings | {', '.join(f'{k}={v}' for k, v in raw['config'].items() if k in _arch_keys(raw['config']))} |",
             "", "## Data", ""]
    lines += _data_lines(data)
    lines += ["", "## Training", ""]
    lines += _stage_lines(stages)
    lines += ["", "## Test metrics", ""]
    lines += _test_lines(ckpt)
    lines += ["", "## Limitations", "",
              "It has seen only the videos of its training data: on other videos it still answers with that "
              "data's words, confidently. Captions are one sentence of at most "
              f"{cfg.max_len - 1} words; nothing in them is checked against the video.",
              "", "## Files", "", "| file | what |", "|---|---|",
              f"| `{CONFIG}` | architecture, model settings, preprocessing, vocabulary size |",
              f"| `{WEIGHTS}` | the weights (safetensors; names as the model's state_dict) |",
              f"| `{VOCAB}` | the words (`itos`, id order) and the attribute words |",
              f"| `{CARD}` | this card |", ""]
    return "\n".join(lines)


def training_stages(ckpt: Path, extra: dict) -> list[dict]:
    """The stages that made `ckpt`, first to last: {dir, recipe, config, epochs (records)}. Followed
    through each stage's ``init_from`` as long as the run folder has it."""
    stages, seen, where, history, base = [], set(), ckpt, extra.get("history"), None
    while where is not None and where.parent.resolve() not in seen and len(stages) < 20:
        stage_dir = where.parent
        seen.add(stage_dir.resolve())
        config = _json(StageFolder(stage_dir).config)
        records, init_from = _metrics_records(StageFolder(stage_dir).metrics)
        if history is not None:  # the checkpoint's own history: the epochs up to this checkpoint
            records, history = [h for h in history if isinstance(h, dict)], None
            init_from = extra.get("init_from", init_from)
        if config is None and not records:
            break
        stages.insert(0, {"dir": stage_dir, "recipe": (config or {}).get("recipe"), "config": config or {},
                          "epochs": records})
        base = _base(stage_dir.resolve().parent, str((config or {}).get("run") or "")) or base
        where = _resolve(init_from, base) if isinstance(init_from, str) else None
    return stages


def data_summary(stage_dir: Path, config: dict) -> dict | None:
    data = config.get("data")
    if not isinstance(data, str):
        return None
    if "://" in data or data.startswith("pipe:"):
        return {"where": data}
    path = _resolve(data, _base(stage_dir.resolve().parent, str(config.get("run") or "")))
    try:
        return {"where": data, "path": path, "build": Build(str(path)).summary()}
    except (UserError, OSError):
        return {"where": data, "path": path}


def _data_lines(data: dict | None) -> list[str]:
    if data is None:
        return ["Not recorded (the checkpoint's run folder has no config.json)."]
    build = data.get("build")
    if build is None:
        return [f"`{data['where']}` (a `pipeline build` output; its build.json is not readable from here)."]
    c, splits = build["config"], build.get("splits", {})
    counts = ", ".join(f"{s} {v.get('clips_out')}" for s, v in splits.items() if isinstance(v, dict))
    synth = " -- the built-in synthetic dataset (`pipeline synth`)" if _is_synth(data) else ""
    return [f"`{data['where']}`: a `pipeline build` of `{c.get('root')}` read as `{c.get('dataset')}`{synth}; "
            f"clips {counts}; {c.get('frames')} frames per clip at {c.get('size')} px."]


def _stage_lines(stages: list[dict]) -> list[str]:
    if not stages:
        return ["Not recorded."]
    out = ["| stage | recipe | preset | epochs | lr | batch | best val CIDEr | val action / colour / shape |",
           "|---|---|---|---|---|---|---|---|"]
    for s in stages:
        c, recipe = s["config"], RECIPES.get(recipe_name(s["recipe"] or ""))
        vals = [e for e in s["epochs"] if isinstance(e.get("val_CIDEr"), (int, float))]
        best = max(vals, key=lambda e: e["val_CIDEr"]) if vals else {}
        acc = " / ".join(_pct(best.get(f"val_{k}")) for k in OBJECT_SLOTS) if best else "-"
        out.append(f"| `{s['dir'].name}` | {recipe.title if recipe else s['recipe']} | {c.get('preset', '-')} | "
                   f"{len(s['epochs'])} | {c.get('lr', '-')} | {c.get('batch_size', '-')} | "
                   f"{_num(best.get('val_CIDEr'), 100)} | {acc} |")
    out += ["", "CIDEr is CIDEr-D x 100; the accuracies say how often the caption names the right action, colour "
            "and shape of the clip's main object (val split, greedy, as during training)."]
    return out


# ---- the front matter model hubs read -----------------------------------------------------------
LICENSE = "mit"  # vidcap's; the weights also carry the terms of their training data and pretrained backbone
PIPELINE_TAG = "video-text-to-text"  # the Hub's task for models that read video and write text


def front_matter(name: str, arch: str, backbone: str, data: dict | None, evals: list[tuple[Path, dict]]) -> list[str]:
    """Hugging-Face-style YAML metadata between ``---`` lines. Strings are written as JSON strings
    (valid YAML); the model-index holds the test numbers of ``train eval``, scaled as in the card."""
    q = json.dumps
    keys = [k for k in MODEL_CARD if any(isinstance(m.get(k), (int, float)) for _, m in evals)]
    lines = ["---", "library_name: vidcap", f"pipeline_tag: {PIPELINE_TAG}", f"license: {LICENSE}", "tags:",
             *(f"- {q(t)}" for t in ("vidcap", "video-captioning", "video-to-text", arch, backbone)),
             *(["metrics:", *(f"- {h}" for h in dict.fromkeys(metric(k).hub for k in keys))] if keys else [])]
    if evals:
        build = (data or {}).get("build") or {}
        config = build.get("config", {})
        dataset = "vidcap built-in synthetic dataset" if build and _is_synth(data) else \
            Path(str(config.get("root") or (data or {}).get("where") or "unknown")).name
        lines += ["model-index:", f"- name: {q(name)}", "  results:"]
        for _, m in evals:
            lines += ["  - task:", f"      type: {PIPELINE_TAG}", "      name: Video captioning", "    dataset:",
                      f"      name: {q(dataset)}", f"      type: {q(str(config.get('dataset', 'unknown')))}",
                      "      split: test", "    metrics:"]
            for k in keys:
                value = m.get(k)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    title = f"{label(k)}{' %' if metric(k).percent else ''} (beam {m.get('beam')})"
                    lines += [f"    - type: {metric(k).hub}", f"      name: {q(title)}", f"      value: {round(100 * value, 2)}"]
    return [*lines, "---", ""]


def _test_evals(ckpt: Path) -> list[tuple[Path, dict]]:
    """`train eval`'s test metrics of this very checkpoint, found beside it."""
    rows = []
    for path in stage_of(ckpt).eval_metrics("test"):
        m = _json(path)
        if isinstance(m, dict) and Path(str(m.get("checkpoint", ""))).name == ckpt.name:
            rows.append((path, m))
    return rows


def _test_lines(ckpt: Path) -> list[str]:
    rows = _test_evals(ckpt)
    if not rows:
        return [f"Not evaluated: no `eval-test-beam*/metrics.json` of `{ckpt.name}` beside it. "
                "`train eval --model THIS_FOLDER --data BUILD --split test` evaluates it."]
    out = ["| decoding | clips | " + " | ".join(label for _, label in TEST_KEYS) + " |",
           "|---|---|" + "---|" * len(TEST_KEYS)]
    for _, m in rows:
        cells = [_pct(m.get(k)) if metric(k).percent else _num(m.get(k), 100) for k, _ in TEST_KEYS]
        out.append(f"| beam {m.get('beam')} | {m.get('clips')} | " + " | ".join(cells) + " |")
    out += ["", f"From `train eval` ({', '.join(f'`{p.parent.name}/metrics.json`' for p, _ in rows)}). BLEU, "
            "METEOR, ROUGE-L and CIDEr(-D) x 100 against the reference captions; action, colour, shape and size: the "
            "share of clips whose caption names the main object's true one (the grounded accuracies; - where "
            "the data has no ground truth)."]
    return out


# ---- small readers ------------------------------------------------------------------------------
def _json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _metrics_records(path: Path) -> tuple[list[dict], str | None]:
    """metrics.jsonl's epoch records (the last of each epoch: a resumed run may repeat one) and init_from."""
    epochs: dict[int, dict] = {}
    init_from = None
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError:
        return [], None
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and r.get("event") == "epoch" and isinstance(r.get("epoch"), int):
            epochs[r["epoch"]] = r
        elif isinstance(r, dict) and r.get("event") == "start" and isinstance(r.get("init_from"), str):
            init_from = r["init_from"]
    return [epochs[k] for k in sorted(epochs)], init_from


def _resolve(path: str, base: Path | None) -> Path:
    """A path the trainer recorded, relative to the directory it ran in (`base`, see _base): where it
    is from here. A stage folder copied from another run has no base of its own; the stage after it
    lends its own (one training directory per run, as a rule)."""
    p = Path(path)
    return p if p.is_absolute() or base is None else base / p


def _base(actual: Path, recorded: str) -> Path | None:
    """The directory a recorded relative path was relative to, given where it is now: the run
    folder less the recorded ``run`` (``/home/me`` for ``runs/x`` at ``/home/me/runs/x``)."""
    rel = Path(recorded)
    n = len(rel.parts)
    if n and not rel.is_absolute() and actual.parts[-n:] == rel.parts:
        return Path(*actual.parts[:-n])
    return None


def _is_synth(data: dict) -> bool:
    """Whether the build's videos are `pipeline synth`'s (its annotation file says so)."""
    c = data["build"]["config"]
    base = _base(Path(data["path"]).resolve(), str(c.get("out", "")))
    root = Path(str(c.get("root", "")))
    if not root.is_absolute() and base is not None:
        root = base / root
    info = _json(root / "videodatainfo.json") if root.is_dir() else None
    return bool(info) and "vidcap synth" in json.dumps(info.get("info", ""))


def _cnn_trained(stages: list[dict]) -> bool:
    return any(s["config"].get("train_cnn") for s in stages)


def _arch_keys(config: dict) -> list[str]:
    from vidcap.model.folder import NOT_MODEL

    return [k for k in config if k not in NOT_MODEL and k not in ("backbone", "n_attributes")]


def _floats(xs) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in xs) + ")"


def _num(v, scale: float = 1.0) -> str:
    return f"{v * scale:.1f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _pct(v) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"
