"""Video captioners: a shared CNN over K frames with its own preprocessing, an attribute head, and a
registered architecture -- ``s2vt`` (the paper's) or ``transformer`` -- behind one decoder interface.

The imports below are the public names; the registries are filled by :func:`registry.discover`, which
imports every module here, so a new architecture or backbone file needs no line in this one."""

from vidcap.model import registry
from vidcap.model.backbones import BACKBONES, create_backbone
from vidcap.model.base import CaptionConfig, VideoCaptioner
from vidcap.model.checkpoint import load_checkpoint, save_checkpoint
from vidcap.model.registry import ARCHS, create_model, make_config, register_model
from vidcap.model.s2vt import Captioner, ModelConfig
from vidcap.model.transformer import TransformerCaptioner, TransformerConfig

registry.discover()

__all__ = ["ARCHS", "BACKBONES", "CaptionConfig", "Captioner", "ModelConfig", "TransformerCaptioner",
           "TransformerConfig", "VideoCaptioner", "create_backbone", "create_model", "load_checkpoint", "make_config",
           "register_model", "save_checkpoint"]
