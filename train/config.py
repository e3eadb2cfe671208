"""Training configuration: one small dataclass, filled from a recipe (what a stage does,
``train/recipes.py``), a preset's schedule (how long and how fast), CLI flags and ``key=value``
overrides (nanoGPT style). Every override is checked for type and range, naming the key.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from vidcap.train.recipes import STAGES, get_recipe
from vidcap.train.reward import BASELINES, REWARDS

DEVICES = ("cpu", "cuda")  # --device, device=
LR_SCHEDULES = ("constant", "cosine")  # lr_schedule=
LOADERS = ("torch", "dali")  # --loader, loader=


@dataclass
class TrainConfig:
    recipe: str = "xe"  # train/recipes.py; --stage 1/2/3 = xe / rfc+ / e2e
    data: str = ""  # pipeline build output
    run: str = ""  # run directory; each recipe writes RUN/<its dir>/ (stage1, stage2, stage3, rfc, ...)
    preset: str = "cpu-small"
    init: str | None = None  # checkpoint to start from (default: the recipe's predecessor's best.pt)
    resume: bool = False
    device: str = "cpu"  # cpu | cuda
    loader: str = "torch"  # torch (PIL decode in DataLoader workers) | dali (NVIDIA DALI)
    amp: bool = False  # bf16 autocast of the step on its device (CUDA; on the CPU too, slower: for checks)
    seed: int = 0
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    # "constant" (the paper's Adam, every preset's), or "cosine": each group's rate follows half a
    # cosine from lr to 0 over the run's steps. Tried on cpu-small's stage 1 (realistic world, seed 0,
    # paired over 240 test clips): all three -5.4 +- 2.6 points, so no preset uses it.
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    cnn_lr_scale: float = 1.0  # CNN trained: its learning rate is lr * this; the captioner keeps lr
    grad_clip: float = 5.0
    train_cnn: bool = False  # end to end: the CNN learns too
    xe_weight: float = 1.0  # loss = xe_weight * L_XE + rl_weight * L_RL + attr_weight * L_attr
    rl_weight: float = 0.0
    attr_weight: float = 0.0
    captions_per_clip: int = 1  # cross-entropy: references per clip per step (the paper: 1)
    samples: int = 8  # M sampled captions per clip for L_RL
    temperature: float = 1.0
    reward: str = "cider-d"  # train/reward.py
    baseline: str = "greedy"  # greedy (the paper's) | mean (of the other samples)
    bn_stats: bool = False  # CNN trained: update BatchNorm running statistics (default: keep them)
    # Memory (docs/training.md "Memory"): recompute the CNN's blocks in backward instead of keeping
    # their activations (CNN trained), and split each batch into this many micro-batches whose
    # gradients add up to the batch's (one process). Neither changes the step's loss or gradient.
    grad_checkpoint: bool = False
    accumulate: int = 1
    # CNN trained: freeze its stem and first N blocks and cache their maps once per clip (with the
    # frames), so each step runs only the blocks above (model/trunk.py; 0: the whole CNN trains).
    trunk_blocks: int = 0
    feature_cache: bool = True  # CNN frozen: features computed once per clip (trunk_blocks: always)
    eval_every: int = 1  # epochs between val evaluations
    eval_beam: int = 1  # 1 = greedy (model selection); `train eval --beam 3` for reports
    num_workers: int = 2  # DataLoader workers for streamed batches
    shuffle_buffer: int = 256
    max_clips: int | None = None  # cap clips per split (smoke tests, quick looks)
    skip_bad_shards: bool = False  # leave out shards that fail their manifest check, with a warning
    save_every: int = 100  # steps between last.pt checkpoints (0: epoch ends only); see docs/training.md "Resume"
    dist_timeout: float = 1800.0  # seconds a torchrun rank waits in a collective before giving up
    backbone_weights: str | None = None
    model_overrides: dict = field(default_factory=dict)  # e.g. model.hidden=256

    @property
    def recipe_dir(self) -> str:
        return get_recipe(self.recipe).dir

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")


# How long and how fast, per preset and per kind of recipe (Recipe.schedule). A schedule's `samples`
# replaces the recipe's M where the recipe samples more than one caption (RFC keeps M = 1).
# paper: Adam, lr 1e-4 (cross-entropy) then 1e-6, batch sizes 64 / 256 / 16 (the official code).
# cpu-small: what trains on this 2-core CPU in the demo's minutes, measured on the built-in dataset
# (docs/training.md; the numbers behind each choice are in the notes of issue 9).
SCHEDULES: dict[str, dict[str, dict]] = {
    "paper": {
        "xe": dict(lr=1e-4, batch_size=64, epochs=50),
        "rl": dict(lr=1e-6, batch_size=256, epochs=50),
        "e2e": dict(lr=1e-6, batch_size=16, epochs=10),
        "scratch": dict(lr=1e-4, batch_size=16, epochs=50),
    },
    "cpu-small": {
        # 4 of a clip's captions per step and weight decay: with one caption per clip per epoch the
        # LSTM memorised the training clips (train action 98%, val 25-32%).
        "xe": dict(lr=2e-3, batch_size=32, epochs=12, weight_decay=3e-4, captions_per_clip=4),
        "rl": dict(lr=5e-5, batch_size=32, epochs=5),
        # the CNN at a tenth of the captioner's lr: at 5e-5 one epoch moved its standardised features
        # by 0.74 of their length (0.42 at 5e-6) and on 1 of 6 demo seeds the captions lost "orange"
        # (colour 99.6% -> 92.9%); with 0.1, stage 3 beat stage 2 on all six (docs/results.md).
        "e2e": dict(lr=5e-5, batch_size=16, epochs=1, samples=4, cnn_lr_scale=0.1),
        "scratch": dict(lr=1e-3, batch_size=16, epochs=4),
    },
    "tiny": {
        "xe": dict(lr=3e-3, batch_size=8, epochs=2),
        "rl": dict(lr=1e-3, batch_size=8, epochs=1, samples=4),
        "e2e": dict(lr=1e-3, batch_size=4, epochs=1, samples=2),
        "scratch": dict(lr=3e-3, batch_size=4, epochs=1),
    },
}

# (check, message) per key: ranges that a run could not survive or that make no sense.
_RANGES = {
    "epochs": (lambda v: v >= 1, "must be >= 1"),
    "batch_size": (lambda v: v >= 1, "must be >= 1"),
    "lr": (lambda v: 0 < v <= 1, "must be > 0 and <= 1"),
    "weight_decay": (lambda v: 0 <= v <= 1, "must be between 0 and 1"),
    "cnn_lr_scale": (lambda v: 0 < v <= 100, "must be > 0 and <= 100"),
    "grad_clip": (lambda v: v >= 0, "must be >= 0 (0: no clipping)"),
    "xe_weight": (lambda v: v >= 0, "must be >= 0"),
    "rl_weight": (lambda v: v >= 0, "must be >= 0"),
    "attr_weight": (lambda v: v >= 0, "must be >= 0"),
    "captions_per_clip": (lambda v: 1 <= v <= 1024, "must be between 1 and 1024"),
    "samples": (lambda v: 1 <= v <= 1024, "must be between 1 and 1024"),
    "accumulate": (lambda v: 1 <= v <= 1024, "must be between 1 and 1024 (1: no micro-batches)"),
    "trunk_blocks": (lambda v: 0 <= v <= 64, "must be between 0 and 64 (0: the whole CNN trains)"),
    "temperature": (lambda v: 0.01 <= v <= 100, "must be between 0.01 and 100"),
    "eval_every": (lambda v: v >= 1, "must be >= 1"),
    "eval_beam": (lambda v: 1 <= v <= 100, "must be between 1 and 100"),
    "num_workers": (lambda v: 0 <= v <= 64, "must be between 0 and 64"),
    "shuffle_buffer": (lambda v: v >= 1, "must be >= 1"),
    "max_clips": (lambda v: v is None or v >= 1, "must be >= 1 (or none)"),
    "save_every": (lambda v: v >= 0, "must be >= 0 (0: at epoch ends only)"),
    "dist_timeout": (lambda v: 10 <= v <= 86400, "must be between 10 and 86400 (seconds)"),
    "device": (lambda v: v in DEVICES, f"must be {' or '.join(DEVICES)}"),
    "loader": (lambda v: v in LOADERS, f"must be {' or '.join(LOADERS)}"),
    "lr_schedule": (lambda v: v in LR_SCHEDULES, f"must be {' or '.join(LR_SCHEDULES)}"),
    "reward": (lambda v: v in REWARDS, f"must be one of {', '.join(sorted(REWARDS))}"),
    "baseline": (lambda v: v in BASELINES, f"must be one of {', '.join(BASELINES)}"),
}
_NOT_OVERRIDABLE = ("model_overrides", "recipe")


def coerce(key: str, text: str, ftype) -> object:
    """`text` as the type `ftype` names (bool, int, float, str, optionally None), or a ValueError naming the key."""
    t = str(ftype)
    if "None" in t and text.lower() in ("none", "null"):
        return None
    if "bool" in t:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}={text}: expected true or false")
    try:
        if "int" in t and "float" not in t:
            return int(text)
        if "float" in t:
            value = float(text)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
            return value
    except ValueError:
        kind = "an integer" if "int" in t and "float" not in t else "a number"
        raise ValueError(f"{key}={text}: expected {kind}") from None
    return text


def check_ranges(cfg: TrainConfig) -> None:
    for key, (ok, msg) in _RANGES.items():
        if not ok(getattr(cfg, key)):
            raise ValueError(f"{key}={getattr(cfg, key)}: {msg}")
    if not (cfg.xe_weight or cfg.rl_weight or cfg.attr_weight):
        raise ValueError("xe_weight, rl_weight and attr_weight are all 0: nothing to train")
    if cfg.accumulate > cfg.batch_size:
        raise ValueError(f"accumulate={cfg.accumulate}: more micro-batches than the batch's {cfg.batch_size} clips")
    if cfg.bn_stats and (cfg.accumulate > 1 or cfg.grad_checkpoint):
        option = f"accumulate={cfg.accumulate}" if cfg.accumulate > 1 else "grad_checkpoint=true"
        raise ValueError(f"{option} with bn_stats=true: BatchNorm would normalise each micro-batch or recomputed "
                         "block with other statistics (and update them twice); use one or the other")
    if cfg.trunk_blocks and not cfg.train_cnn:
        raise ValueError(f"trunk_blocks={cfg.trunk_blocks}: the CNN is frozen in this recipe ({cfg.recipe}), so "
                         "there is no top to train; it is for recipes that train the CNN (stage 3)")
    if cfg.trunk_blocks and cfg.bn_stats:
        raise ValueError(f"trunk_blocks={cfg.trunk_blocks} with bn_stats=true: the trunk's maps are cached once per "
                         "clip (BatchNorm statistics that move would make them stale); use one or the other")
    if cfg.baseline == "mean" and cfg.rl_weight and cfg.samples < 2:
        raise ValueError(f"baseline=mean needs samples >= 2 (the other samples' mean); got samples={cfg.samples}")


# (lowest, highest) of the numeric model settings: beyond them a model cannot be built or trained here.
_MODEL_RANGES = {"image_size": (16, 1024), "n_frames": (1, 64), "embed": (1, 65536), "hidden": (1, 65536),
                 "dropout": (0.0, 0.99), "max_len": (2, 1000), "n_attributes": (1, 100_000), "init_range": (0.0, 10.0),
                 "d_model": (1, 65536), "heads": (1, 1024), "enc_layers": (0, 64), "dec_layers": (1, 64),
                 "ff": (1, 262_144), "init_std": (0.0, 10.0)}


def model_override(key: str, text: str) -> object:
    """model.KEY=VALUE, checked against the settings of the registered architectures, types and ranges
    (a setting of another architecture than model.arch's is refused when the model is built)."""
    from vidcap.model.frames import check_setting, get_frame_features
    from vidcap.model.registry import LEGACY_FOCUS, get_arch, model_settings

    types = model_settings(legacy=True)
    if key not in types:
        raise ValueError(f"model.{key}: unknown model setting; known: {', '.join(sorted(model_settings()))}")
    value = coerce(f"model.{key}", text, types[key])
    if key == "arch":
        get_arch(value)
    if key == "features":
        get_frame_features(value)
    if "." in key or key in LEGACY_FOCUS:  # a frame-features entry's setting: its own bounds
        entry, _, setting = key.rpartition(".")
        check_setting(entry or "focus", setting, value)
    lo, hi = _MODEL_RANGES.get(key, (None, None))
    if lo is not None and value is not None and not lo <= value <= hi:
        raise ValueError(f"model.{key}={text}: must be between {lo} and {hi}")
    return value


def make_train_config(recipe: str | int, preset: str, overrides: list[str], **fixed) -> TrainConfig:
    """Defaults < recipe < preset schedule < CLI flags (`fixed`) < key=value overrides.

    `recipe`: a recipe name, or a stage number (1, 2, 3: the paper's three recipes)."""
    if isinstance(recipe, int) and recipe not in STAGES:
        raise ValueError(f"--stage {recipe}: must be 1, 2 or 3")
    r = get_recipe(STAGES[recipe] if isinstance(recipe, int) else recipe)
    if preset not in SCHEDULES:
        raise ValueError(f"--preset {preset}: unknown; choose from {', '.join(sorted(SCHEDULES))}")
    schedule = dict(SCHEDULES[preset][r.schedule])
    if r.samples == 1:
        schedule.pop("samples", None)
    settings = dict(train_cnn=r.train_cnn, xe_weight=r.xe, rl_weight=r.rl, attr_weight=r.attr, samples=r.samples,
                    feature_cache=not r.train_cnn)
    cfg = TrainConfig(recipe=r.name, preset=preset, **{**settings, **schedule})
    for k, v in fixed.items():
        if v is not None:
            setattr(cfg, k, v)
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected key=value")
        if key.startswith("model."):
            cfg.model_overrides[key[6:]] = model_override(key[6:], value)
            continue
        if key not in types or key in _NOT_OVERRIDABLE:
            known = ", ".join(sorted(k for k in types if k not in _NOT_OVERRIDABLE))
            raise ValueError(f"override {item!r}: unknown key {key!r}; known: {known}")
        setattr(cfg, key, coerce(key, value, types[key]))
    check_ranges(cfg)
    return cfg
