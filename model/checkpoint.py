"""Checkpoints hold the model config (its architecture, sizes and the backbone's preprocessing), the
vocabulary, the attribute words and the weights as plain types and tensors, so loading uses
``torch.load(weights_only=True)`` and never unpickles code; the model is rebuilt through the
architecture registry (``model.registry.create_model``).

A file that is not such a checkpoint -- a pickle with code in it, a truncated file, another
program's torch file, a text file -- is a CheckpointError naming the file and what is wrong with
it, never torch's own message (which may advise ``weights_only=False``: exactly what one must not
do with an untrusted file). The console scripts print it as a one-line user error.

Saving writes to a path or to any binary file object; train places checkpoints atomically with
``vidcap.atomic`` (model imports nothing of the project, so it has no writer policy of its own).
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path
from typing import BinaryIO

import torch

from vidcap.model.base import VideoCaptioner
from vidcap.model.registry import ARCHS, create_model, upgrade_config
from vidcap.tokens import SPECIALS

CHECKPOINT_KEYS = ("config", "vocab", "attributes", "model", "extra")
# Bounds of integer settings, generous for any real model, small enough that nothing overflows or
# allocates without end (a checkpoint's max_len of 10^9 asked for 128 GB: round 3, R-13). One table
# for checkpoints and model folders (model/folder.py checks a folder's config.json with it too).
INT_BOUNDS = {"n_frames": (1, 64), "image_size": (8, 2048), "max_len": (2, 1024)}
DEFAULT_INT_BOUNDS = (0, 1 << 20)
# Frames are scaled to [0, 1] before (x - mean) / std: real means are ~0.4, stds ~0.2. A std of 0 or
# 1e-320, or a mean of 1e308, turns every frame into NaN and every caption into "".
PIXEL_BOUNDS = {"pixel_mean": (-10.0, 10.0), "pixel_std": (1e-3, 100.0)}
MAX_WORD_CHARS = 200  # a vocabulary word; a 1,000,000-character "word" made 1 MB captions


class CheckpointError(Exception):
    """A missing or unusable checkpoint file; the message names it."""


def save_checkpoint(target: str | Path | BinaryIO, model: VideoCaptioner, vocab: list[str], attributes: list[str],
                    extra: dict | None = None) -> None:
    """torch.save the checkpoint to `target` (a path, written in place, or a binary file object)."""
    if isinstance(target, (str, Path)):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config_dict(), "vocab": list(vocab), "attributes": list(attributes),
                "model": model.state_dict(), "extra": extra or {}}, target)


def _unreadable(path: Path, e: Exception) -> CheckpointError:
    with open(path, "rb") as f:
        head = f.read(4)
    zipped = head.startswith(b"PK\x03\x04")  # torch's format; b"\x80\x02\x8a\x0a" opens the legacy one
    if not (zipped or head.startswith(b"\x80\x02\x8a\x0a")):
        why = "not a torch checkpoint file"
    elif isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
        why = "it holds Python objects besides tensors and plain types; refusing to unpickle them"
    else:
        why = "truncated or corrupt" + (" (its zip archive cannot be read)" if zipped else "")
    return CheckpointError(f"{path}: not a vidcap checkpoint: {why}")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint dict, checked to be one of ours (the keys and types save_checkpoint writes)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, KeyError, EOFError... on bad files
        raise _unreadable(path, e) from None
    if not (isinstance(ckpt, dict) and all(k in ckpt for k in CHECKPOINT_KEYS)):
        raise CheckpointError(f"{path}: not a vidcap checkpoint: a torch file without {', '.join(CHECKPOINT_KEYS)}")
    types = {"config": dict, "vocab": list, "attributes": list, "model": dict, "extra": dict}
    for key, kind in types.items():
        if not isinstance(ckpt[key], kind):
            raise CheckpointError(f"{path}: not a vidcap checkpoint: {key!r} is a {type(ckpt[key]).__name__}")
    for key in ("vocab", "attributes"):
        if not all(isinstance(w, str) for w in ckpt[key]):
            raise CheckpointError(f"{path}: not a vidcap checkpoint: {key!r} holds something other than words")
    return ckpt


def check_settings(config: dict, where: str | Path) -> None:
    """The one check of a model's settings that a checkpoint's config and a model folder's config.json
    both pass (after their own type checks): every int within its bounds, every float finite, the
    pixel mean and std three finite numbers within :data:`PIXEL_BOUNDS`. Why: a checkpoint was only
    checked for shapes, so ``n_frames=0`` ended in a traceback and ``pixel_std=0`` in empty captions
    with exit 0, where the same values in a model folder were one line."""
    for key, value in config.items():
        if isinstance(value, bool) or key in PIXEL_BOUNDS:
            continue
        if isinstance(value, int) or key in INT_BOUNDS:
            lo, hi = INT_BOUNDS.get(key, DEFAULT_INT_BOUNDS)
            if not isinstance(value, int):
                raise CheckpointError(f"{where}: {key} {_short(value)} is not an int")
            if not lo <= value <= hi:
                raise CheckpointError(f"{where}: {key} {value} is outside {lo}..{hi}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise CheckpointError(f"{where}: {key} {value} is not a finite number")
    for key, (lo, hi) in PIXEL_BOUNDS.items():
        value = config.get(key)
        if value is None:  # a model not yet built: the backbone's own preprocessing fills it in
            continue
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value)):
            raise CheckpointError(f"{where}: {key} {_short(value)} is not three finite numbers")
        if not all(lo <= x <= hi for x in value):
            raise CheckpointError(f"{where}: {key} {list(value)} is outside {lo:g}..{hi:g} (frames are scaled "
                                  "to 0..1 first)")


def check_finite_weights(state: dict, where: str | Path) -> None:
    """Refuse weights holding NaN or infinity: they caption every clip as "" with exit 0 (R-14)."""
    for key, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: its weights hold NaN or infinite values (e.g. {key[:80]!r}); "
                                  "not a usable model")


def _short(value: object, n: int = 30) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def check_vocabulary(vocab: list[str], vocab_size: object, where: str | Path) -> None:
    """The vocabulary must fit the model: one word per output of its output layer (``vocab_size``, whose
    shape the weights were checked against), the special tokens first at their fixed ids, no word
    twice. Why at load: a shorter vocabulary ends decoding in an IndexError, one without the special
    tokens decodes ``<eos>`` as a word (captions of ``w17 w6 ...``), and both are silent until then."""
    n = len(SPECIALS)
    if tuple(vocab[:n]) != SPECIALS:
        raise CheckpointError(f"{where}: its vocabulary does not start with the special tokens {' '.join(SPECIALS)} "
                              f"(it starts {' '.join(map(str, vocab[:n])) or 'with nothing'}); not a vidcap vocabulary")
    if len(vocab) != vocab_size:
        raise CheckpointError(f"{where}: its vocabulary has {len(vocab)} words but its output layer has "
                              f"{vocab_size} outputs (config vocab_size); the two must be equal")
    odd = next((w for w in vocab[n:] if not w or len(w) > MAX_WORD_CHARS), None)
    if odd is not None:
        raise CheckpointError(f"{where}: its vocabulary holds {'an empty word' if not odd else f'a word of {len(odd):,} characters'}"
                              f" (at most {MAX_WORD_CHARS}); not a vidcap vocabulary")
    if len(set(vocab)) != len(vocab):
        seen: set[str] = set()
        twice = next(w for w in vocab if w in seen or seen.add(w))
        raise CheckpointError(f"{where}: its vocabulary holds the word {twice[:40]!r} twice")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    pretrained_backbone: bool = False) -> tuple[VideoCaptioner, dict]:
    """The model (weights loaded, eval mode) and the raw checkpoint dict (vocab, attributes, extra).

    The backbone is built without fetching pretrained weights: the checkpoint's own weights replace them.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    config = upgrade_config(ckpt["config"])
    if not isinstance(config["arch"], str) or config["arch"] not in ARCHS:
        raise CheckpointError(f"{path}: architecture {config['arch']!r} is not one this vidcap knows "
                              f"({', '.join(sorted(ARCHS))})")
    check_vocabulary(ckpt["vocab"], config.get("vocab_size"), path)
    check_settings(config, path)
    check_finite_weights(ckpt["model"], path)
    try:
        config["pretrained"] = pretrained_backbone
        with torch.device("meta"):  # shapes first, allocating nothing: a config may claim any size
            shapes = {k: tuple(v.shape) for k, v in create_model(config).state_dict().items()}
        got = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in ckpt["model"].items()}
        if shapes != got:
            wrong = sorted(set(shapes) ^ set(got)) or sorted(k for k in shapes if shapes[k] != got[k])
            raise CheckpointError(f"{path}: not a vidcap checkpoint: its weights do not match its model config "
                                  f"({len(wrong)} tensors differ, e.g. {wrong[0]!r})")
        model = create_model(config)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: its model config or weights do not fit its architecture "
                              f"({config['arch']}: {first})") from None
    model.backbone_info = dataclasses.replace(model.backbone_info, weights=f"checkpoint {path}")
    return model.eval(), ckpt
