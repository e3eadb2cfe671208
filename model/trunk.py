"""Train only the CNN's top blocks, the frozen trunk's maps computed once per clip (``trunk_blocks=K``).

Why. Stage 3 -- the paper's end-to-end step -- trains the whole CNN on every step: the frames are
decoded, the parameter-free cues run, the CNN's every block runs forward and backward. On cpu-small
that bought 53 steps at a tenth of the captioner's rate, and the CNN did not measurably move
(docs/real-world.md). Most of that cost is in the low blocks, which see edges and textures and gain
least from the captions. With ``trunk_blocks=K`` the stem and the first K blocks are frozen, their
output is computed once per clip and kept in the feature cache beside the clip's frames, and each
step runs only the blocks above: the same loss and gradients as the whole CNN with those K blocks
frozen (tests/test_trunk.py), in a fraction of the time, so stage 3 can run long enough to move
the CNN. The ``paper`` preset trains all of it (IRv2 is not split here).

How. The frame-features entries (model/frames.py) never see the split: the model's ``cnn_pass``
hands them a :class:`TopCNN` -- the blocks above the trunk, with the calls they use
(``forward_intermediates``, ``forward_features``, the pooled call) -- and, as its input, the trunk's
output: computed and recorded while the cache is built, replayed from the cache in each step.
"""

from __future__ import annotations

import torch
from torch import nn

from vidcap.model.backbones import TinyCNN

TINY_GROUP = 3  # TinyCNN's layers per block: convolution, BatchNorm, ReLU


def n_blocks(backbone: nn.Module) -> int:
    """How many blocks the backbone is split into here (0: not splittable)."""
    if isinstance(backbone, TinyCNN):
        return len(backbone.features) // TINY_GROUP
    if all(hasattr(backbone, a) for a in ("conv_stem", "bn1", "blocks", "stage_ends", "conv_head", "bn2")):
        return len(backbone.blocks)  # timm's EfficientNet family (tf_efficientnet_lite0/lite2)
    return 0


def check_trunk(backbone: nn.Module, k: int, name: str) -> None:
    """ValueError unless the first `k` blocks can be the trunk, with at least one block left to train."""
    n = n_blocks(backbone)
    if not n:
        raise ValueError(f"trunk_blocks={k}: backbone {name} is not split into blocks here (the EfficientNet-Lite "
                         "backbones and tiny are); train the whole CNN with trunk_blocks=0")
    if not 1 <= k < n:
        raise ValueError(f"trunk_blocks={k}: backbone {name} has {n} blocks; the trunk takes 1 to {n - 1} of them "
                         "(0: no trunk)")


def trunk_modules(backbone: nn.Module, k: int) -> list[tuple[str, nn.Module]]:
    """(state_dict prefix, module) of the stem and the first `k` blocks, in order."""
    if isinstance(backbone, TinyCNN):
        return [(f"features.{i}", backbone.features[i]) for i in range(k * TINY_GROUP)]
    return [("conv_stem", backbone.conv_stem), ("bn1", backbone.bn1),
            *[(f"blocks.{i}", backbone.blocks[i]) for i in range(k)]]


def trunk_state(backbone: nn.Module, k: int) -> dict[str, torch.Tensor]:
    """The trunk's weights and buffers (what its cached maps depend on), by their backbone keys."""
    return {f"{prefix}.{key}": v for prefix, m in trunk_modules(backbone, k) for key, v in m.state_dict().items()}


def run_trunk(backbone: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """Normalised frames (N, 3, H, W) -> the map after the trunk (N, C, h, w)."""
    for _, m in trunk_modules(backbone, k):
        x = m(x)
    return x


class TopCNN:
    """The blocks above the trunk, over the trunk's output: the calls an entry makes of a backbone.
    Not a module: it holds the model's own backbone, whose parameters stay where they are."""

    def __init__(self, backbone: nn.Module, k: int):
        self.backbone, self.k = backbone, k

    def _blocks(self) -> list[nn.Module]:
        b = self.backbone
        if isinstance(b, TinyCNN):
            return list(b.features)[self.k * TINY_GROUP:]
        return list(b.blocks)[self.k:]

    def forward_features(self, t: torch.Tensor) -> torch.Tensor:
        for blk in self._blocks():
            t = blk(t)
        if not isinstance(self.backbone, TinyCNN):
            t = self.backbone.bn2(self.backbone.conv_head(t))
        return t

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """The pooled features, as the backbone's own call (num_classes 0)."""
        fmap = self.forward_features(t)
        return fmap.mean((2, 3)) if isinstance(self.backbone, TinyCNN) else self.backbone.forward_head(fmap)

    def forward_intermediates(self, t: torch.Tensor, indices: list[int], stop_early: bool = False,
                              intermediates_only: bool = False):
        """timm's call (feature_info indices), from the trunk's output on: a map the trunk ends with is
        the trunk's output itself; one inside the trunk was not kept, so it is refused."""
        ends = self.backbone.stage_ends
        take = [ends[i] for i in indices]
        if min(take) < self.k:
            raise ValueError(f"trunk_blocks={self.k}: the frame features read the map after block {min(take)}, "
                             f"inside the frozen trunk; use trunk_blocks <= {min(take)}")
        blocks = list(self.backbone.blocks)
        run = blocks[self.k : max(take)] if stop_early else blocks[self.k :]
        out = [t] if self.k in take else []
        feat_idx = self.k
        for feat_idx, blk in enumerate(run, start=self.k + 1):
            t = blk(t)
            if feat_idx in take:
                out.append(t)
        if intermediates_only:
            return out
        if feat_idx == ends[-1]:
            t = self.backbone.bn2(self.backbone.conv_head(t))
        return t, out
