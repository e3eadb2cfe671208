"""Checkpoints hold the model config, the vocabulary, the attribute words and the weights as plain
types and tensors, so loading uses ``torch.load(weights_only=True)`` and never unpickles code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from model.captioner import Captioner, ModelConfig


def save_checkpoint(path: str | Path, model: Captioner, vocab: list[str], attributes: list[str],
                    extra: dict | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"config": model.config_dict(), "vocab": list(vocab), "attributes": list(attributes),
                "model": model.state_dict(), "extra": extra or {}}, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    pretrained_backbone: bool = False) -> tuple[Captioner, dict]:
    """The model (weights loaded, eval mode) and the raw checkpoint dict (vocab, attributes, extra).

    The backbone is built without fetching pretrained weights: the checkpoint's own weights replace them.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    cfg = ModelConfig.from_dict(ckpt["config"])
    cfg.pretrained = pretrained_backbone
    model = Captioner(cfg)
    model.load_state_dict(ckpt["model"])
    model.backbone_info = dataclasses.replace(model.backbone_info, weights=f"checkpoint {path}")
    return model.eval(), ckpt
