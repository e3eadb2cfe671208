"""Whether a fresh model fits before it is allocated.

``model.hidden=65536 model.embed=65536`` is inside each setting's own range, yet it makes an LSTM of
34 G parameters: allocating it ended in the allocator's traceback ("DefaultCPUAllocator: not enough
memory: you tried to allocate 68719476736 bytes"). The model is first built on the ``meta`` device
(shapes only, nothing allocated, no weights read), its parameters counted, and training's need --
weights, gradients and Adam's two moments, 4 x 4 bytes per parameter, activations not counted --
compared with the memory the device has available now. Too big is one line naming the settings.

A model from a checkpoint (``--init``, ``--resume``) needs no check: it is at most as large as its
file, which is already in memory.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from vidcap.errors import UserError
from vidcap.model.base import CaptionConfig
from vidcap.model.registry import create_model

BYTES_PER_PARAMETER = 16  # fp32 weights + gradients + Adam's exp_avg and exp_avg_sq


def parameter_count(config: CaptionConfig) -> int:
    """The number of parameters of the model `config` describes, counted on the meta device."""
    with torch.device("meta"):
        model = create_model(dataclasses.replace(config, pretrained=False))
    return sum(p.numel() for p in model.parameters())


def available_bytes(device: str) -> int | None:
    """Memory free for a new model on `device` (cpu: MemAvailable of /proc/meminfo), or None if unknown."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_model_fits(config: CaptionConfig, device: str, settings: dict, preset: str) -> None:
    """A UserError naming `settings` (the model.KEY=VALUE overrides) when training a model of `config`
    needs more memory than `device` has available."""
    n = parameter_count(config)
    need, have = n * BYTES_PER_PARAMETER, available_bytes(device)
    if have is None or need <= have:
        return
    named = " ".join(f"model.{k}={v}" for k, v in settings.items()) or f"preset {preset}"
    raise UserError(f"{named}: a model of {n / 1e9:.3g} G parameters needs about {_gb(need)} GB to train "
                    f"(weights, gradients and Adam's two moments), and {device} has {_gb(have)} GB available; "
                    "choose smaller sizes")


def _gb(n: int) -> str:
    return f"{n / 1e9:,.0f}" if n >= 100e9 else f"{n / 1e9:.3g}"
