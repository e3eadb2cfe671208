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

from vidcap.model.frames import DEFAULT as DEFAULT_FEATURES
from vidcap.model.frames import setting_types as frame_setting_types

if TYPE_CHECKING:
    from vidcap.model.base import CaptionConfig, VideoCaptioner

DEFAULT_ARCH = "s2vt"
LEGACY_PIXEL_NORM = (0.5, 0.5, 0.5)  # what every backbone used before backbones carried their own
NOT_SETTINGS = ("vocab_size", "pixel_mean", "pixel_std")  # fixed by the data and the backbone, not by model.KEY=
# What a frame is before ``model.features`` (model/frames.py): ``pool`` named the way, and the focus
# cues were flat settings of every architecture, each with the value a file written before it was
# trained with (what its absence means). Checkpoints, model folders and ``model.KEY=`` overrides in the
# old spelling are read through this table (``feature_settings``), and nowhere else.
LEGACY_POOL = {"avg": ("pooled", {}), "grid": ("grid", {"side": 2}), "grid3": ("grid", {"side": 3}),
               "focus": ("focus", {})}
LEGACY_FOCUS = {"exposure": "none", "stabilize": "none", "stabilize_share": 0.5, "saliency": "deviation",
                "track": False, "scene": True, "frame_focus": False, "foreground": "deviation"}
LEGACY_SETTINGS = ("pool", *LEGACY_FOCUS)


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
    frame_keys = {k for k in overrides if k in ("features", "features_config", *LEGACY_SETTINGS) or "." in k}
    foreign = sorted(k for k in overrides if k not in names and k not in frame_keys)
    if foreign:
        own = ", ".join(sorted(names - set(NOT_SETTINGS)))
        raise ValueError(f"model.{foreign[0]}: not a setting of model.arch={arch.name}; its settings: {own}")
    preset_ = arch.presets[preset]
    features, features_config = feature_settings(preset_.get("features", DEFAULT_FEATURES),
                                                 preset_.get("features_config", {}),
                                                 {k: overrides[k] for k in frame_keys})
    rest = {k: v for k, v in overrides.items() if k not in frame_keys}
    return arch.config(vocab_size=vocab_size, **{**preset_, **rest, "arch": arch.name, "features": features,
                                                 "features_config": features_config})


def feature_settings(name: str, given: dict, changes: dict) -> tuple[str, dict]:
    """The frame-feature entry and its settings after `changes` (a config's or the command line's):
    ``features``, ``features_config`` (a dict of settings), ``NAME.KEY`` and the old spellings
    (``pool``, and the focus cues' flat names). Choosing another entry drops the settings of the one
    before; a setting of an entry other than the chosen one is a one-line error."""
    conf = dict(given)
    unknown = sorted(set(changes) - {"features", "features_config", *LEGACY_SETTINGS}
                     - {k for k in changes if "." in k})
    if unknown:
        raise ValueError(f"model.{unknown[0]}: not a frame-feature setting")

    def choose(new: str, extra: dict) -> None:
        nonlocal name, conf
        if new != name:
            name, conf = new, {}
        conf.update(extra)

    if "pool" in changes:
        if changes["pool"] not in LEGACY_POOL:
            raise ValueError(f"model.pool={changes['pool']!r}: must be one of {', '.join(LEGACY_POOL)} "
                             f"(the old spelling of model.features)")
        choose(*LEGACY_POOL[changes["pool"]])
    if "features" in changes:
        choose(changes["features"], {})
    for key, value in changes.get("features_config", {}).items():
        conf[key] = value
    for key in LEGACY_FOCUS:
        if key in changes and (name == "focus" or changes[key] != LEGACY_FOCUS[key]):
            if name != "focus":
                raise ValueError(f"model.{key}={changes[key]}: a setting of model.features=focus, not of "
                                 f"{name} (model.focus.{key})")
            conf[key] = changes[key]
    for key in (k for k in changes if "." in k):
        entry, _, setting = key.partition(".")
        if entry != name:
            raise ValueError(f"model.{key}: a setting of model.features={entry}, but this model's is {name}")
        conf[setting] = changes[key]
    return name, conf


def upgrade_config(d: dict) -> dict:
    """A checkpoint's config dict with what older checkpoints lack filled in as they were trained."""
    d = dict(d)
    d["arch"] = d.get("arch") or DEFAULT_ARCH
    for key in ("pixel_mean", "pixel_std"):
        if d.get(key) is None:
            d[key] = LEGACY_PIXEL_NORM
    old = {k: d.pop(k) for k in LEGACY_SETTINGS if k in d}
    if old:
        d["features"], d["features_config"] = feature_settings(d.get("features") or "pooled",
                                                               d.get("features_config") or {}, old)
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


def model_settings(legacy: bool = False) -> dict[str, str]:
    """Every setting `model.KEY=VALUE` may set, over all architectures and frame-feature entries
    (``focus.track``): {name: type annotation}; with `legacy`, the old spellings too (``pool``, ``track``)."""
    out: dict[str, str] = {}
    for arch in ARCHS.values():
        for f in fields(arch.config):
            if f.name not in NOT_SETTINGS and f.name != "features_config":
                out.setdefault(f.name, str(f.type))
    entries = frame_setting_types()
    out.update(entries)
    if legacy:
        out.update({"pool": "str", **{k: entries[f"focus.{k}"] for k in LEGACY_FOCUS}})
    return out
