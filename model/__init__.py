"""The captioner: shared CNN over K frames -> FC -> S2VT LSTMs, attribute head, decoders."""

from model.backbones import BACKBONES, create_backbone
from model.captioner import PRESETS, Captioner, ModelConfig, make_config
from model.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["BACKBONES", "PRESETS", "Captioner", "ModelConfig", "create_backbone", "load_checkpoint",
           "make_config", "save_checkpoint"]
