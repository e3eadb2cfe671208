"""Every random-number state a resumed step depends on, as plain types a ``weights_only`` load accepts.

Captured per rank at a step boundary and restored right before the next step: torch's CPU
generator (dropout, caption sampling), CUDA's when present, NumPy's and Python's global ones. The
sampler generators -- the shard order, the shuffle buffer, the feature-cache permutation, the
references picked per clip -- are not state: each is seeded from (seed, epoch, rank) and a resume
replays it to the saved position (train/data.py), so the saved position is their state.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture(device: torch.device) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(state), "gauss": gauss_next},
    }


def restore(state: dict, device: torch.device) -> None:
    """Restore what `state` holds (checkpoints from before step checkpoints hold torch's only)."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        cuda = state["cuda"]  # older checkpoints: the list of every device's state
        torch.cuda.set_rng_state(cuda[device.index or 0] if isinstance(cuda, list) else cuda, device)
    if state.get("numpy") is not None:
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if state.get("python") is not None:
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
