"""Learned attention heads over a frame's CNN cells, shared by the frame-features entries that learn
where to look: ``attend`` (model/attend.py, instead of the hand-made cues) and ``focus`` with
``heads`` (model/focus.py, beside them).

A two-layer 1x1 convolution scores every cell of a frame's maps for each head; a head's weights are
a softmax over the frame's cells (uniform at the start: the last layer starts at zero), its
features the maps' channels averaged under it, and where it looks -- centroid and spread -- three
numbers more (``attention_where``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN = 64  # the scoring convolution's width


class AttentionHeads(nn.Sequential):
    """The scoring network (its layers are this Sequential's, so checkpoints keep their keys) and the
    attention it makes."""

    def __init__(self, inputs: int, heads: int):
        super().__init__(nn.Conv2d(inputs, HIDDEN, 1), nn.GELU(), nn.Conv2d(HIDDEN, heads, 1))
        nn.init.zeros_(self[2].weight)  # uniform attention to start with: the global average
        nn.init.zeros_(self[2].bias)

    def weights(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, K, C_in, h, w) -> each head's weights over the frame's cells, (B, K, heads, h, w)."""
        b, k = maps.shape[:2]
        logits = self(maps.flatten(0, 1).float())  # (B*K, heads, h, w)
        weights = logits.flatten(2).softmax(-1).view_as(logits)
        return weights.view(b, k, *weights.shape[1:])

    def attend(self, feats: torch.Tensor, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The features (B, K, C, h, w) under each head's attention over `maps` (what the heads score):
        (B, K, heads * C), and the weights."""
        weights = self.weights(maps)
        return torch.einsum("bkchw,bknhw->bknc", feats.float(), weights).flatten(2), weights


def median_deviation_cells(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, K, 3, H, W) in [0, 255] -> (B, K, 1, h, w): each cell's mean absolute deviation of the grey
    level from the clip's temporal median, scaled to about unit size (/ 32)."""
    grey = frames.float().mean(2)  # (B, K, H, W)
    dev = (grey - grey.median(1, keepdim=True).values).abs()
    return F.adaptive_avg_pool2d(dev, size)[:, :, None] / 32


def attention_where(weights: torch.Tensor) -> torch.Tensor:
    """(B, K, heads, h, w) attention -> (B, K, 3 * heads): per head the expected x and y (-1..1) of the
    cell it attends to and the spread (RMS distance) around that point."""
    h, w = weights.shape[-2:]
    ys = torch.linspace(-1, 1, h, device=weights.device).view(h, 1).expand(h, w)
    xs = torch.linspace(-1, 1, w, device=weights.device).view(1, w).expand(h, w)
    x, y = (weights * xs).sum((-2, -1)), (weights * ys).sum((-2, -1))
    spread = (weights * ((xs - x[..., None, None]) ** 2 + (ys - y[..., None, None]) ** 2)).sum((-2, -1)).sqrt()
    return torch.stack([x, y, spread], -1).flatten(2)
