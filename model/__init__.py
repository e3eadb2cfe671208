"""Video captioners: a shared CNN over K frames with its own preprocessing, an attribute head, and a
registered architecture -- ``s2vt`` (the paper's) or ``transformer`` -- behind one decoder interface, and
a registered way of turning frames into features (``pooled``, ``grid``, ``focus``: model/frames.py).

The imports below are the public names; the registries are filled by :func:`registry.discover`, which
imports every module here, so a new architecture, backbone or frame-features file needs no line in this one."""

from vidcap.model import registry
from vidcap.model.backbones import BACKBONES, create_backbone
from vidcap.model.base import CaptionConfig, VideoCaptioner
from vidcap.model.checkpoint import load_checkpoint, save_checkpoint
from vidcap.model.frames import FRAME_FEATURES, register_frame_features
from vidcap.model.registry import ARCHS, create_model, make_config, register_model
from vidcap.model.s2vt import ModelConfig, S2VTCaptioner
from vidcap.model.transformer import TransformerCaptioner, TransformerConfig

registry.discover()

__all__ = ["ARCHS", "BACKBONES", "FRAME_FEATURES", "CaptionConfig", "S2VTCaptioner", "ModelConfig", "TransformerCaptioner",
           "TransformerConfig", "VideoCaptioner", "create_backbone", "create_model", "load_checkpoint", "make_config",
           "register_frame_features", "register_model", "save_checkpoint"]
