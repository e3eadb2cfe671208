"""Caption architectures by name, as timm's ``@register_model``: ``model.arch=s2vt`` (the paper's,
the default) and ``model.arch=transformer``. Each registers its model class, its config dataclass
and its presets (sizes for ``paper`` / ``cpu-small`` / ``tiny``). One function, ``create_model``,
turns a config -- a preset with overrides (``make_config``) or a checkpoint's dict -- into a model:
the trainer builds through it, and so does ``load_checkpoint`` (hence ``train eval``, ``caption``,
the probes and the feature cache).

Adding an architecture is one new file in model/ with a ``@register_model`` class: importing
``vidcap.model`` imports every module of the package (:func:`discover`), so no list names them, and
the CLI's help and every check read the registry.

Checkpoints record ``arch`` with the rest of the config. One written before architectures existed
has no ``arch`` -- it is S2VT -- and no ``pixel_mean`` / ``pixel_std``: every backbone was
normalised with (0.5, 0.5, 0.5) then, so that is what it keeps (``upgrade_config``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vidcap.model.base import CaptionConfig, VideoCaptioner

DEFAULT_ARCH = "s2vt"
LEGACY_PIXEL_NORM = (0.5, 0.5, 0.5)  # what every backbone used before backbones carried their own
NOT_SETTINGS = ("vocab_size", "pixel_mean", "pixel_std")  # fixed by the data and the backbone, not by model.KEY=
# Settings added after checkpoints and model folders were first written, with the value every file
# written before them was trained with -- what their absence means (issue 20's camera options). A
# checkpoint gets them from its config's defaults; a model folder, strict about missing keys, from here.
ADDED_SETTINGS = {"exposure": "none", "stabilize": "none", "stabilize_share": 0.5, "saliency": "deviation",
                  "track": False, "scene": True, "frame_focus": False, "foreground": "deviation"}


@dataclass(frozen=True)
class Arch:
    name: str
    model: type
    config: type
    presets: dict[str, dict]


ARCHS: dict[str, Arch] = {}


def register_model(name: str, config: type, presets: dict[str, dict]) -> Callable[[type], type]:
    """Class decorator: register a VideoCaptioner subclass under `name` with its config and presets."""

    def deco(cls: type) -> type:
        ARCHS[name] = Arch(name, cls, config, presets)
        return cls

    return deco


def discover() -> None:
    """Import every module of vidcap.model (run once by the package's __init__): each file that
    registers an architecture or a backbone is found without a list to keep."""
    import importlib
    import pkgutil
    from pathlib import Path

    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{module.name}")


def architectures() -> list[str]:
    """The registered architectures' names, in registration order (s2vt first: the default)."""
    return list(ARCHS)


def get_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ValueError(f"model.arch={name}: unknown architecture; choose from {', '.join(sorted(ARCHS))}")
    return ARCHS[name]


def make_config(preset: str, vocab_size: int, **overrides) -> CaptionConfig:
    """The config of architecture ``overrides['arch']`` (default s2vt): its preset, then the overrides."""
    arch = get_arch(overrides.get("arch") or DEFAULT_ARCH)
    if preset not in arch.presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(arch.presets)}")
    names = {f.name for f in fields(arch.config)}
    foreign = sorted(k for k in overrides if k not in names)
    if foreign:
        own = ", ".join(sorted(names - set(NOT_SETTINGS)))
        raise ValueError(f"model.{foreign[0]}: not a setting of model.arch={arch.name}; its settings: {own}")
    return arch.config(vocab_size=vocab_size, **{**arch.presets[preset], **overrides, "arch": arch.name})


def upgrade_config(d: dict) -> dict:
    """A checkpoint's config dict with what older checkpoints lack filled in as they were trained."""
    d = dict(d)
    d["arch"] = d.get("arch") or DEFAULT_ARCH
    for key in ("pixel_mean", "pixel_std"):
        if d.get(key) is None:
            d[key] = LEGACY_PIXEL_NORM
    return d


def create_model(config: CaptionConfig | dict) -> VideoCaptioner:
    """The model a config describes: a config dataclass (make_config), or a dict (a checkpoint's)."""
    if isinstance(config, dict):
        d = upgrade_config(config)
        config = get_arch(d["arch"]).config.from_dict(d)
    arch = get_arch(config.arch)
    if type(config) is not arch.config:
        raise TypeError(f"model.arch={arch.name} needs a {arch.config.__name__}, not a {type(config).__name__}")
    return arch.model(config)


def model_settings() -> dict[str, str]:
    """Every setting `model.KEY=VALUE` may set, over all architectures: {name: type annotation}."""
    out: dict[str, str] = {}
    for arch in ARCHS.values():
        for f in fields(arch.config):
            if f.name not in NOT_SETTINGS:
                out.setdefault(f.name, str(f.type))
    return out
