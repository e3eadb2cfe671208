"""An inference copy of a CNN with every eval-mode BatchNorm folded into the convolution before it.

Why: in eval mode a BatchNorm is a fixed per-channel affine map, so folded into the preceding
convolution's weight and bias it costs nothing. Unfolded it was 23% of Lite0's NHWC forward at
160 px on 2 cores (1.7 of 7.4 s of `frame_features` for 64 clips), paid on every pass that does
not train the CNN: the feature cache, `train eval`, `train robustness`, `train probe`, `caption`.

The folded copy is an inference-only artefact: `FoldedCNN.get` rebuilds it whenever a weight or
buffer of the original changes (torch's in-place version counters, bumped by an optimiser step,
`load_state_dict` or `.to()`), and it is never trained, saved or handed a gradient. A convolution
and a BatchNorm are folded only when they are neighbours among their parent's children, the
BatchNorm's width is the convolution's output width, and the copy then reproduces the original on
a test batch (else the original is used, with a warning): child order is not data flow in every
network, and the check makes an unusual backbone cost speed, never correctness.
"""

from __future__ import annotations

import copy
import warnings
from itertools import pairwise

import torch
from torch import nn

# float32 rounding of the folded weights: the measured gap on Lite0 is ~1e-5 of the features' scale
_TOLERANCE = 1e-3


def _activation_after(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What a BatchNorm module does after normalising, or None when folding it is unsafe."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)  # timm's BatchNormAct2d
    if type(bn).__name__ == "BatchNormAct2d" and isinstance(drop, nn.Module) and isinstance(act, nn.Module):
        return nn.Sequential(drop, act)
    return None


@torch.no_grad()
def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = (bn.running_var + bn.eps).rsqrt()
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)


def _fold_children(parent: nn.Module) -> int:
    folded = 0
    names = [n for n, _ in parent.named_children()]
    for a, b in pairwise(names):
        conv, bn = getattr(parent, a), getattr(parent, b)
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue
        after = _activation_after(bn)
        if after is None or bn.running_mean is None or bn.num_features != conv.out_channels:
            continue
        _fold_pair(conv, bn)
        setattr(parent, b, after)
        folded += 1
    for child in parent.children():
        folded += _fold_children(child)
    return folded


def fold_batchnorm(cnn: nn.Module, example: torch.Tensor) -> nn.Module | None:
    """A copy of `cnn` (in eval mode) with its BatchNorms folded, checked on `example`; None when
    nothing could be folded or the copy does not reproduce `cnn` on it."""
    folded = copy.deepcopy(cnn).eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    if _fold_children(folded) == 0:
        return None
    # checked in float32 even under autocast: bf16's own rounding (~3e-3) is no sign of a wrong fold
    with torch.no_grad(), torch.autocast(example.device.type, enabled=False):
        want, got = cnn(example.float()), folded(example.float())
    gap = float((want - got).abs().max() / want.abs().max().clamp_min(1e-6))
    if not gap <= _TOLERANCE:
        warnings.warn(f"{type(cnn).__name__}: folding its BatchNorms changed its output by {gap:.1e} "
                      "(relative); running it unfolded", stacklevel=3)
        return None
    return folded


class FoldedCNN:
    """The folded copy of one CNN, rebuilt when the original's weights, buffers or device change."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._folded: nn.Module | None = None

    @staticmethod
    def usable(cnn: nn.Module) -> bool:
        """True when no BatchNorm of `cnn` normalises with batch statistics (all in eval mode)."""
        return not any(m.training for m in cnn.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))

    def get(self, cnn: nn.Module, example: torch.Tensor) -> nn.Module:
        """The folded copy of `cnn` (which must be `usable`), or `cnn` itself when it does not fold."""
        tensors = [*cnn.parameters(), *cnn.buffers()]
        key = (id(cnn), tuple((t._version, t.data_ptr(), t.dtype) for t in tensors))
        if key != self._key:
            self._folded = fold_batchnorm(cnn, example[:2])
            self._key = key
        return self._folded if self._folded is not None else cnn
