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
import pickle
from pathlib import Path
from typing import BinaryIO

import torch

from vidcap.model.base import VideoCaptioner
from vidcap.model.registry import ARCHS, create_model, upgrade_config
from vidcap.tokens import SPECIALS

CHECKPOINT_KEYS = ("config", "vocab", "attributes", "model", "extra")


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
