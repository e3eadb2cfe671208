"""The model folder: a trained captioner as files any tool can read, with no pickle anywhere.

```
DIR/config.json        {"format": "vidcap-model", "format_version": "1.0", "name",
                        "architecture": "s2vt" | "transformer",
                        "model": the architecture's settings (backbone, sizes, pool, max_len, ...),
                        "preprocessing": {"n_frames", "image_size", "pixel_mean", "pixel_std",
                                          "sampling": "segment_centres"},
                        "vocab_size"}
DIR/model.safetensors  every tensor of the model's state_dict, by its state_dict name
DIR/vocab.json         {"itos": [<pad>, <bos>, <eos>, <unk>, words...], "attributes": [words...]}
DIR/README.md          the model card (written by ``train export``; nothing reads it)
```

Preprocessing, spelled out for another tool: take ``n_frames`` frames at the centres of equal
segments of the clip (frame ``floor((i + 0.5) * N / n_frames)`` of N), resize each to
``image_size`` x ``image_size`` RGB, scale to [0, 1], then ``(x - pixel_mean) / pixel_std``
(``pipeline.frames`` and ``VideoCaptioner.frame_features`` are vidcap's own implementation).

Why not the checkpoint: a ``.pt`` file is a pickle (vidcap reads it with ``weights_only=True``,
but other tools have to trust it), it carries the optimiser and RNG states nobody serving a model
needs, and nothing but torch reads it. safetensors is a JSON header plus raw bytes: reading it
executes nothing, and the header alone gives every tensor's shape.

The folder is untrusted input. Every way it can be wrong -- a missing, oversized, non-UTF-8 or
deeply nested config.json, an unknown architecture or setting, a size no model has, a missing or
truncated model.safetensors, tensors whose names or shapes differ from what config.json builds --
is a :class:`ModelFolderError` whose one-line message names the file. Shapes are compared on the
``meta`` device from the safetensors header before anything is allocated, so a config.json that
claims absurd sizes costs nothing; the real model is then at most as large as the file on disk.

Only this module knows the file names and their schema: ``train export`` writes what
:func:`model_folder_files` returns, and ``caption``, ``caption serve`` and ``train eval`` load
through :func:`load_model` (a folder, or a checkpoint for ``--ckpt``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from vidcap.model.base import VideoCaptioner
from vidcap.model.checkpoint import (
    DEFAULT_INT_BOUNDS,
    INT_BOUNDS,
    CheckpointError,
    check_finite_weights,
    check_settings,
    check_vocabulary,
    load_checkpoint,
)
from vidcap.model.frames import resolve as resolve_features
from vidcap.model.registry import ARCHS, LEGACY_SETTINGS, create_model, feature_settings
from vidcap.tokens import SPECIALS

FORMAT = "vidcap-model"
FORMAT_VERSION = "1.0"  # MAJOR.MINOR: readers refuse another MAJOR; a MINOR adds top-level keys they may ignore
CONFIG, WEIGHTS, VOCAB, CARD = "config.json", "model.safetensors", "vocab.json", "README.md"
PREPROCESSING = ("n_frames", "image_size", "pixel_mean", "pixel_std")
SAMPLING = "segment_centres"
# Settings of a checkpoint's config that are not the folder's "model" section: the architecture and
# the vocabulary size have their own keys, preprocessing its own section, and the weights come from
# model.safetensors (a folder never points at another weights file).
NOT_MODEL = ("arch", "vocab_size", "pretrained", "backbone_weights", *PREPROCESSING)
MAX_JSON_BYTES = {CONFIG: 1 << 20, VOCAB: 64 << 20}  # far above any real one: a config of 1 MB is an attack


class ModelFolderError(CheckpointError):
    """A model folder that cannot be used; the message names the file. A CheckpointError, so every
    command that loads models already prints it as its one-line user error."""


@dataclass
class ModelFolder:
    """What a folder's JSON files say (no weights read yet)."""

    path: Path
    name: str
    config: dict  # the flat config dict create_model takes (pretrained off: the weights are the file's)
    vocab: list[str]
    attributes: list[str]


# ---- writing ------------------------------------------------------------------------------------------
def model_folder_files(model: VideoCaptioner, vocab: list[str], attributes: list[str], name: str
                       ) -> dict[str, bytes]:
    """{file name: bytes} of config.json, model.safetensors and vocab.json for a trained model.
    The caller places them (``train export`` writes each atomically, config.json last)."""
    from safetensors.torch import save

    cfg = model.config_dict()
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "architecture": cfg["arch"],
              "model": {k: v for k, v in cfg.items() if k not in NOT_MODEL},
              "preprocessing": {"n_frames": cfg["n_frames"], "image_size": cfg["image_size"],
                                "pixel_mean": list(cfg["pixel_mean"]), "pixel_std": list(cfg["pixel_std"]),
                                "sampling": SAMPLING},
              "vocab_size": cfg["vocab_size"]}
    # contiguous copies: safetensors refuses views and tensors that share memory
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return {CONFIG: _json_bytes(config),
            WEIGHTS: save(tensors, metadata={"format": "pt", "vidcap": FORMAT_VERSION}),
            VOCAB: _json_bytes({"itos": list(vocab), "attributes": list(attributes)})}


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


# ---- reading --------------------------------------------------------------------------------------------
def is_model_folder(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def read_model_folder(path: str | Path) -> ModelFolder:
    """config.json and vocab.json, checked; the weights are read by :func:`load_model_folder`."""
    path = Path(path)
    if not path.exists():
        raise ModelFolderError(f"{path}: model folder not found")
    if not path.is_dir():
        raise ModelFolderError(f"{path}: not a model folder (a file; --ckpt takes checkpoint files)")
    doc = _read_json(path / CONFIG)
    where = path / CONFIG
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFolderError(f"{where}: not a vidcap model config (no \"format\": \"{FORMAT}\")")
    version = doc.get("format_version")
    if not (isinstance(version, str) and version.split(".")[0] == FORMAT_VERSION.split(".")[0]):
        raise ModelFolderError(f"{where}: format_version {version!r}; this vidcap reads {FORMAT_VERSION.split('.')[0]}.x")
    arch = doc.get("architecture")
    if not (isinstance(arch, str) and arch in ARCHS):
        raise ModelFolderError(f"{where}: architecture {_short(arch)} is not one this vidcap knows "
                               f"({', '.join(sorted(ARCHS))})")
    for key, kind, what in (("model", dict, "an object"), ("preprocessing", dict, "an object"),
                            ("vocab_size", int, "an int"), ("name", str, "a string")):
        if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
            raise ModelFolderError(f"{where}: {key!r} missing or not {what}")
    if len(doc["name"]) > 200:
        raise ModelFolderError(f"{where}: 'name' longer than 200 characters")
    pre = doc["preprocessing"]
    if pre.get("sampling", SAMPLING) != SAMPLING:
        raise ModelFolderError(f"{where}: preprocessing.sampling {_short(pre.get('sampling'))}: this vidcap "
                               f"samples frames only as {SAMPLING!r}")
    config = {"arch": arch, "vocab_size": doc["vocab_size"], "pretrained": False, "backbone_weights": None}
    fields_of = {f.name: f for f in fields(ARCHS[arch].config)}
    for section, keys in (("model", [k for k in fields_of if k not in NOT_MODEL]), ("preprocessing", PREPROCESSING)):
        given = _upgraded_features(doc[section], where) if section == "model" else doc[section]
        allowed = set(keys) | ({"sampling"} if section == "preprocessing" else set())
        unknown = sorted(set(given) - allowed)
        if unknown:
            raise ModelFolderError(f"{where}: {section}.{_short(unknown[0], 40)} is not a setting of "
                                   f"architecture {arch}")
        for key in keys:
            if key not in given:
                raise ModelFolderError(f"{where}: {section}.{key} missing")
            if key == "features_config":  # the entry's own settings, checked by the entry's config
                try:
                    resolve_features(config["features"], given[key])
                except ValueError as e:
                    raise ModelFolderError(f"{where}: {section}.{key}: {e}") from None
                config[key] = dict(given[key])
                continue
            config[key] = _checked(given[key], fields_of[key].type, f"{where}: {section}.{key}", key)
    _check_int(config["vocab_size"], f"{where}: vocab_size", "vocab_size")
    vocab_doc = _read_json(path / VOCAB)
    itos = vocab_doc.get("itos") if isinstance(vocab_doc, dict) else None
    attributes = vocab_doc.get("attributes", []) if isinstance(vocab_doc, dict) else None
    if not (isinstance(itos, list) and all(isinstance(w, str) for w in itos) and tuple(itos[:4]) == SPECIALS):
        raise ModelFolderError(f"{path / VOCAB}: not a vidcap vocabulary (\"itos\": words starting with "
                               f"{', '.join(SPECIALS)})")
    if not (isinstance(attributes, list) and all(isinstance(w, str) for w in attributes)):
        raise ModelFolderError(f"{path / VOCAB}: \"attributes\" is not a list of words")
    if len(itos) != config["vocab_size"]:
        raise ModelFolderError(f"{path / VOCAB}: {len(itos)} words, but {CONFIG} says vocab_size "
                               f"{config['vocab_size']}")
    check_vocabulary(itos, config["vocab_size"], path / VOCAB)  # and no word twice
    check_settings(config, where)  # the checker a checkpoint's config passes too: bounds, finite, pixel ranges
    return ModelFolder(path, doc["name"] or path.name, config, itos, attributes)


def load_model_folder(path: str | Path, map_location: str | torch.device = "cpu"
                      ) -> tuple[VideoCaptioner, ModelFolder]:
    """The model (weights loaded, eval mode) and what its JSON files say. Reads no pickle."""
    from safetensors import SafetensorError, safe_open

    folder = read_model_folder(path)
    weights = folder.path / WEIGHTS
    if not weights.is_file():
        raise ModelFolderError(f"{weights}: missing" if not weights.exists() else f"{weights}: not a file")
    try:
        with torch.device("meta"):  # shapes first, allocating nothing
            expected = {k: tuple(v.shape) for k, v in create_model(dict(folder.config)).state_dict().items()}
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError, OverflowError) as e:
        raise ModelFolderError(f"{folder.path / CONFIG}: its settings build no {folder.config['arch']} model "
                               f"({_first_line(e)})") from None
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            if got != expected:
                wrong = sorted(set(expected) ^ set(got)) or sorted(k for k in expected if expected[k] != got[k])
                raise ModelFolderError(f"{weights}: its tensors do not match {CONFIG} ({len(wrong)} differ, "
                                       f"e.g. {_short(wrong[0], 60)}: {got.get(wrong[0])} in the file, "
                                       f"{expected.get(wrong[0])} from {CONFIG})")
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # truncated, not safetensors, bad header
        raise ModelFolderError(f"{weights}: not a readable safetensors file ({_first_line(e)})") from None
    check_finite_weights(state, weights)
    model = create_model(dict(folder.config))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # same shapes, but e.g. a dtype torch cannot copy
        raise ModelFolderError(f"{weights}: its tensors do not fit the model ({_first_line(e)})") from None
    model.to(map_location)
    model.backbone_info = dataclasses.replace(model.backbone_info, weights=f"model folder {folder.path}")
    return model.eval(), folder


def load_model(ckpt: str | Path | None = None, model_dir: str | Path | None = None,
               map_location: str | torch.device = "cpu") -> tuple[VideoCaptioner, dict]:
    """The model of ``--ckpt FILE`` or ``--model DIR`` and a checkpoint-shaped dict (config, vocab,
    attributes, extra, plus name and source), so callers need not care where the model came from."""
    if (ckpt is None) == (model_dir is None):
        raise ValueError("load_model: give exactly one of ckpt and model_dir")
    if model_dir is not None:
        model, folder = load_model_folder(model_dir, map_location)
        return model, {"config": model.config_dict(), "vocab": folder.vocab, "attributes": folder.attributes,
                       "extra": {}, "name": folder.name, "source": str(folder.path)}
    model, raw = load_checkpoint(ckpt, map_location)
    return model, {**raw, "name": f"{Path(ckpt).parent.name}/{Path(ckpt).name}", "source": str(ckpt)}


# ---- checks ---------------------------------------------------------------------------------------------
def _read_json(path: Path) -> object:
    if not path.exists():
        raise ModelFolderError(f"{path}: missing")
    if not path.is_file():
        raise ModelFolderError(f"{path}: not a regular file")
    limit = MAX_JSON_BYTES[path.name]
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ModelFolderError(f"{path}: larger than {limit >> 20} MB; not a model folder's {path.name}")

    def no_constants(name: str):
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=no_constants)
    except UnicodeDecodeError as e:
        raise ModelFolderError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ModelFolderError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError as e:
        raise ModelFolderError(f"{path}: invalid JSON: {e}") from None
    except RecursionError:
        raise ModelFolderError(f"{path}: invalid JSON: nested too deeply") from None


def _upgraded_features(model: dict, where: Path) -> dict:
    """A folder's "model" section with a frame's features in today's spelling: a folder written before
    ``model.features`` holds ``pool`` and the focus cues' flat settings (some of them missing from
    folders older still: what their absence means is model/registry.py's LEGACY_FOCUS)."""
    old = {k: model[k] for k in LEGACY_SETTINGS if k in model}
    if not old and "features" in model:
        return model
    if not all(isinstance(v, (str, bool, int, float)) for v in old.values()):
        raise ModelFolderError(f"{where}: model.{next(k for k, v in old.items() if not isinstance(v, (str, bool, int, float)))}"
                               ": not a plain value")
    try:
        name, conf = feature_settings("pooled", {}, old)
    except ValueError as e:
        raise ModelFolderError(f"{where}: {e}") from None
    return {**{k: v for k, v in model.items() if k not in LEGACY_SETTINGS}, "features": name, "features_config": conf}


def _checked(value: object, annotation: str, where: str, key: str) -> object:
    """`value` if it has the type `annotation` names (and is in range), else a ModelFolderError."""
    if value is None and annotation.endswith("| None"):
        return None
    base = annotation.removesuffix(" | None")
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "int":
        return _check_int(value, where, key)
    if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if base == "str" and isinstance(value, str) and len(value) <= 100:
        return value
    if base.startswith("tuple[float") and isinstance(value, list) and len(value) == 3 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value):
        if key == "pixel_std" and min(value) <= 0:
            raise ModelFolderError(f"{where}: must be > 0")
        return tuple(float(x) for x in value)
    raise ModelFolderError(f"{where}: {_short(value)} is not a{'n' if base == 'int' else ''} {base}")


def _check_int(value: object, where: str, key: str) -> int:
    lo, hi = INT_BOUNDS.get(key, DEFAULT_INT_BOUNDS)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelFolderError(f"{where}: {_short(value)} is not an int")
    if not lo <= value <= hi:
        raise ModelFolderError(f"{where}: {value} is outside {lo}..{hi}")
    return value


def _short(value: object, n: int = 30) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__
