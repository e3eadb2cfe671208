"""How much the CNN learns while it trains (stage 3): per block of the backbone, the gradient that
reaches it and how far its weights have moved.

Why. Stage 3 -- the paper's end-to-end step -- left cpu-small's CNN where it was: linear probes of its
features agreed to the decimal before and after (issue 37). Whether that is because no gradient
reaches the CNN, because the rate is too small for the gradient it gets, or because one epoch is too
few steps is a question of numbers per block, which this records in each epoch's line of
metrics.jsonl (``cnn_blocks``): ``{block: [grad_rms, change]}``, where

- ``grad_rms`` is the root mean square over the epoch's steps of the block's gradient norm, as the
  backward pass left it (before ``grad_clip``), summed over ranks' averaged gradients under DDP;
- ``change`` is ``||W - W0|| / ||W0||`` over the block's weights, W0 the weights when this process
  started the stage (on ``--resume``: where it resumed).

A block is the backbone's top-level child, or for a timm ``blocks`` list each of its stages
(``blocks.0`` ... ``blocks.6`` for EfficientNet-Lite). Hooks only read gradients: training is unchanged.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn


def block_name(param_name: str) -> str:
    """``blocks.3.1.conv_pw.weight`` -> ``blocks.3``; ``conv_stem.weight`` -> ``conv_stem``."""
    parts = param_name.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" and len(parts) > 2 else parts[0]


class CNNWatch:
    def __init__(self, backbone: nn.Module):
        self.params: dict[str, list[nn.Parameter]] = defaultdict(list)
        for name, p in backbone.named_parameters():
            if p.requires_grad:
                self.params[block_name(name)].append(p)
        self.start = {b: [p.detach().clone() for p in ps] for b, ps in self.params.items()}
        self.sq: dict[str, float] = defaultdict(float)
        self.passes: dict[str, int] = defaultdict(int)
        self._handles = [p.register_post_accumulate_grad_hook(self._hook(b, i == 0))
                         for b, ps in self.params.items() for i, p in enumerate(ps)]

    def _hook(self, block: str, counts: bool):
        def record(p: torch.Tensor) -> None:
            self.sq[block] += float(p.grad.detach().float().square().sum())
            if counts:  # one count per backward pass that reaches the block
                self.passes[block] += 1
        return record

    def epoch_record(self) -> dict[str, list[float]]:
        """{block: [grad_rms over the epoch's backward passes, relative weight change since the start]};
        resets the gradient sums for the next epoch."""
        out = {}
        with torch.no_grad():
            for b, ps in self.params.items():
                moved = sum(float((p - w0).float().square().sum()) for p, w0 in zip(ps, self.start[b], strict=True))
                size = sum(float(w0.float().square().sum()) for w0 in self.start[b])
                rms = (self.sq[b] / self.passes[b]) ** 0.5 if self.passes[b] else 0.0
                out[b] = [float(f"{rms:.4g}"), float(f"{(moved / max(size, 1e-30)) ** 0.5:.4g}")]
        self.sq.clear()
        self.passes.clear()
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
