"""Training configuration: one small dataclass, per-preset and per-stage defaults, and
``key=value`` overrides from the command line (nanoGPT style)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainConfig:
    stage: int = 1
    data: str = ""  # pipeline build output
    run: str = ""  # run directory; each stage writes RUN/stage{N}/
    preset: str = "cpu-small"
    init: str | None = None  # checkpoint to start from (default: previous stage's best.pt)
    resume: bool = False
    device: str = "cpu"  # cpu | cuda
    loader: str = "torch"  # torch (PIL decode in DataLoader workers) | dali (NVIDIA DALI)
    amp: bool = False  # bf16 autocast, CUDA only
    seed: int = 0
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    samples: int = 8  # M sampled captions per clip (stages 2, 3)
    temperature: float = 1.0
    rl_weight: float = 0.95  # stage 3: loss = rl_weight * L_RL + attr_weight * L_attr
    attr_weight: float = 0.05
    bn_stats: bool = False  # stage 3: update BatchNorm running statistics (default: keep them)
    feature_cache: bool = True  # stages 1-2: pooled CNN features computed once per clip
    eval_every: int = 1  # epochs between val evaluations
    eval_beam: int = 1  # 1 = greedy (model selection); `train eval --beam 3` for reports
    num_workers: int = 2  # DataLoader workers for streamed (stage 3) batches
    shuffle_buffer: int = 256
    max_clips: int | None = None  # cap clips per split (smoke tests, quick looks)
    backbone_weights: str | None = None
    model_overrides: dict = field(default_factory=dict)  # e.g. model.hidden=256

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")


# Per preset and stage. Paper: Adam, lr 1e-4 (stage 1) then 1e-6, batch 64 / 256 / 16 (official code).
# cpu-small: measured on the 2-core CPU with the built-in dataset; RL at 1e-6 does not move a small
# model in a few epochs, so stages 2-3 use 2e-5 / 1e-5 (see README "Training").
STAGE_DEFAULTS: dict[str, dict[int, dict]] = {
    "paper": {
        1: dict(lr=1e-4, batch_size=64, epochs=50),
        2: dict(lr=1e-6, batch_size=256, epochs=50, samples=8),
        3: dict(lr=1e-6, batch_size=16, epochs=10, samples=8, feature_cache=False),
    },
    "cpu-small": {
        1: dict(lr=2e-3, batch_size=32, epochs=20),
        2: dict(lr=5e-5, batch_size=32, epochs=8, samples=8),
        3: dict(lr=1e-5, batch_size=16, epochs=1, samples=4, feature_cache=False),
    },
    "tiny": {
        1: dict(lr=3e-3, batch_size=8, epochs=2),
        2: dict(lr=1e-3, batch_size=8, epochs=1, samples=4),
        3: dict(lr=1e-3, batch_size=4, epochs=1, samples=2, feature_cache=False),
    },
}


def _coerce(name: str, text: str, current):
    ftype = {f.name: f.type for f in dataclasses.fields(TrainConfig)}[name]
    if "bool" in str(ftype):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}={text}: expected true/false")
    if text.lower() in ("none", "null") and "None" in str(ftype):
        return None
    if "int" in str(ftype) and "float" not in str(ftype):
        return int(text)
    if "float" in str(ftype):
        return float(text)
    return text


def make_train_config(stage: int, preset: str, overrides: list[str], **fixed) -> TrainConfig:
    """Defaults < preset/stage defaults < CLI flags (`fixed`) < key=value overrides."""
    if preset not in STAGE_DEFAULTS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(STAGE_DEFAULTS)}")
    cfg = TrainConfig(stage=stage, preset=preset, **STAGE_DEFAULTS[preset][stage])
    for k, v in fixed.items():
        if v is not None:
            setattr(cfg, k, v)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value")
        if key.startswith("model."):
            cfg.model_overrides[key[6:]] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
            continue
        if key not in names or key in ("model_overrides",):
            raise ValueError(f"override {item!r}: unknown key {key!r}; known: {', '.join(sorted(names))}")
        setattr(cfg, key, _coerce(key, value, getattr(cfg, key)))
    if cfg.stage not in (1, 2, 3):
        raise ValueError(f"--stage {cfg.stage}: must be 1, 2 or 3")
    if cfg.device not in ("cpu", "cuda"):
        raise ValueError(f"device={cfg.device}: must be cpu or cuda")
    if cfg.loader not in ("torch", "dali"):
        raise ValueError(f"loader={cfg.loader}: must be torch or dali")
    return cfg
