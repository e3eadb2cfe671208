"""How a clip's frames become the captioner's per-frame features, by name (``model.features=NAME``):
a registry beside the backbones and the architectures.

Why a registry. What a frame is to the captioner -- the paper's global average of the CNN's last map,
a grid of it, or the focus cues that undo the camera and pool where the subject moves -- used to be
eight settings of every architecture's config, branched over in one method. Each way is now an
entry: its own small config (``model.NAME.KEY=VALUE``), the CNN maps it reads, a call that turns the
frames into features, and a fingerprint that keys the feature cache. A new way -- a learned
attention, say -- is one new file in model/ with a ``@register_frame_features`` class; importing
``vidcap.model`` finds it (model/registry.py's ``discover``).

The call shape: ``entry(frames, cnn_pass)`` with the clip's frames (B, K, 3, H, W) float in [0, 255]
and ``cnn_pass``, a context manager from the model that normalises frames for its backbone and picks
the CNN to run -- the trained one, or its BatchNorm-folded copy when no CNN weight is trained -- so
an entry never sees the preprocessing or the freezing. It returns (B, K, D) with D = sum(blocks).

An entry with weights of its own (``learned``: model/attend.py) splits its call into ``cache`` (what a
frozen CNN gives: the feature cache of stages 1-2 keeps it) and ``from_cache`` (its weights, run in
every training step), so it trains in every stage without running the CNN again.

``pooled`` and ``grid`` live here (a few lines each); ``focus`` is model/focus.py, ``attend``
model/attend.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT = "pooled"  # the paper's
# (B*K, 3, H, W) normalised frames and the CNN module to run on them, inside the right grad mode
CNNPass = Callable[[torch.Tensor], AbstractContextManager[tuple[nn.Module, torch.Tensor]]]


@dataclass
class FeaturesConfig:
    """An entry's settings. ``CHOICES`` and ``RANGES`` bound its fields (checked on the command line,
    in ``make_config`` and in a model folder's config.json, which is untrusted); ``check`` adds what
    one field alone cannot say."""

    CHOICES: ClassVar[dict[str, tuple]] = {}
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {}

    def check(self, name: str) -> None:
        """Cross-field rules; raise ValueError naming ``model.NAME.KEY``."""


class FrameFeatures(nn.Module):
    """Base of every entry. A subclass sets ``Config``, fills ``self.blocks`` (the widths of the blocks
    its features are made of, side by side: the model gives each the same variance when it
    standardises them) and implements ``forward``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[FeaturesConfig]] = FeaturesConfig
    learned: ClassVar[bool] = False  # has weights of its own, trained with the captioner

    def __init__(self, cfg: FeaturesConfig, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.cfg = cfg
        self.blocks: list[int] = [feature_dim]

    @property
    def dim(self) -> int:
        return sum(self.blocks)

    def forward(self, frames: torch.Tensor, cnn_pass: CNNPass) -> torch.Tensor:
        raise NotImplementedError

    def cache(self, frames: torch.Tensor, cnn_pass: CNNPass) -> torch.Tensor:
        """What the feature cache keeps of a clip while the CNN is frozen (stages 1-2): an entry without
        weights of its own keeps its features; a learned one, what its weights read (``from_cache``)."""
        return self(frames, cnn_pass)

    def from_cache(self, cached: torch.Tensor) -> torch.Tensor:
        """The features (B, K, D) from what ``cache`` kept -- run in the training step, with gradients."""
        return cached

    def std_floor(self) -> torch.Tensor:
        """Per dimension, the least standard deviation ``feature_norm`` divides by. The statistics are
        fixed from the features at the start of stage 1; a learned entry's outputs that are constant
        then (attend's centroids under its uniform start) would otherwise be divided by ~0 once they
        move."""
        return torch.full((self.dim,), 1e-4)

    def fingerprint(self) -> list:
        """What changes the features beside the CNN's weights and input: keys the feature cache."""
        return [self.name, asdict(self.cfg)]


FRAME_FEATURES: dict[str, type[FrameFeatures]] = {}


def register_frame_features(name: str) -> Callable[[type[FrameFeatures]], type[FrameFeatures]]:
    def deco(cls: type[FrameFeatures]) -> type[FrameFeatures]:
        cls.name = name
        FRAME_FEATURES[name] = cls
        return cls

    return deco


def get_frame_features(name: str) -> type[FrameFeatures]:
    if name not in FRAME_FEATURES:
        raise ValueError(f"model.features={name}: unknown; choose from {', '.join(sorted(FRAME_FEATURES))}")
    return FRAME_FEATURES[name]


def setting_types() -> dict[str, str]:
    """Every ``NAME.KEY`` an entry takes, with its type annotation (``model.focus.track=true``)."""
    return {f"{name}.{f.name}": str(f.type) for name, cls in FRAME_FEATURES.items() for f in fields(cls.Config)}


def check_setting(name: str, key: str, value: Any) -> Any:
    """`value` for ``model.NAME.KEY``, type-checked (ints widened to floats) and bounded, else ValueError."""
    cls = get_frame_features(name).Config
    types = {f.name: str(f.type) for f in fields(cls)}
    where = f"model.{name}.{key}"
    if key not in types:
        raise ValueError(f"{where}: not a setting of model.features={name}; its settings: "
                         f"{', '.join(sorted(types)) or 'none'}")
    kind = types[key]
    ok = {"bool": isinstance(value, bool), "str": isinstance(value, str) and len(value) <= 100,
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}[kind]
    if not ok:
        raise ValueError(f"{where}={str(value)[:30]!r}: not a{'n' if kind == 'int' else ''} {kind}")
    value = float(value) if kind == "float" else value
    if key in cls.CHOICES and value not in cls.CHOICES[key]:
        raise ValueError(f"{where}={value!r}: must be one of {', '.join(map(str, cls.CHOICES[key]))}")
    lo, hi = cls.RANGES.get(key, (-math.inf, math.inf))
    if kind in ("int", "float") and not lo <= value <= hi:
        raise ValueError(f"{where}={value}: must be between {lo} and {hi}")
    return value


def resolve(name: str, given: dict) -> FeaturesConfig:
    """Entry `name`'s config from `given` (its defaults for what is missing), every value checked."""
    if not isinstance(given, dict):
        raise ValueError(f"model.features_config: {str(given)[:30]!r} is not a mapping")
    cls = get_frame_features(name).Config
    cfg = cls(**{key: check_setting(name, key, value) for key, value in given.items()})
    cfg.check(name)
    return cfg


def create_frame_features(name: str, given: dict, backbone: nn.Module, feature_dim: int) -> FrameFeatures:
    cls = get_frame_features(name)
    return cls(resolve(name, given), backbone, feature_dim)


# ---- the entries that read the last map alone -------------------------------------------------------
@register_frame_features("pooled")
class Pooled(FrameFeatures):
    """The paper's: the global average of the CNN's last map (Inception-ResNet-v2: 1536 numbers)."""

    def forward(self, frames: torch.Tensor, cnn_pass: CNNPass) -> torch.Tensor:
        b, k = frames.shape[:2]
        with cnn_pass(frames) as (cnn, x):
            return cnn(x).view(b, k, -1)


@dataclass
class GridConfig(FeaturesConfig):
    CHOICES: ClassVar[dict[str, tuple]] = {"side": (2, 3)}
    side: int = 2  # cells per side


@register_frame_features("grid")
class Grid(FrameFeatures):
    """The last map averaged over each cell of a side x side grid (side^2 x D numbers). Global pooling
    throws away where things are, so a clip moving left and one moving right give nearly the same
    frames' features (Lite0, built-in data: a frame and its mirror image have centred cosine 0.92); a
    grid keeps coarse position, and motion shows as features moving between cells."""

    Config = GridConfig

    def __init__(self, cfg: GridConfig, backbone: nn.Module, feature_dim: int):
        super().__init__(cfg, backbone, feature_dim)
        self.blocks = [feature_dim * cfg.side**2]

    def forward(self, frames: torch.Tensor, cnn_pass: CNNPass) -> torch.Tensor:
        b, k = frames.shape[:2]
        with cnn_pass(frames) as (cnn, x):
            return F.adaptive_avg_pool2d(cnn.forward_features(x), self.cfg.side).flatten(1).view(b, k, -1)
