"""What every caption architecture shares, so that the trainer, the feature cache, ``train eval``,
``caption`` and the probes never need to know which one they hold:

- the CNN over the K frames of a clip, with its backbone's own preprocessing (mean, std and input
  size from its pretrained config, stored in the model config and so in every checkpoint);
  ``cnn_pass`` is the one place where pixels are normalised;
- a clip's frames -> per-frame features by the entry ``model.features`` names (model/frames.py);
- freezing (stages 1-2) and BatchNorm handling when the CNN trains (stage 3);
- optional standardisation of the pooled features (``feature_norm``) and the attribute head's
  input (temporal mean of the pooled features);
- the decoders (``sample``, ``greedy``, ``beam``), written once in model/decoding.py on top of the
  step interface each architecture implements: ``encode``, ``step``, ``reorder``; plus ``forward``
  (teacher-forced log-probs) for cross-entropy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from vidcap.model import decoding, trunk
from vidcap.model.backbones import create_backbone
from vidcap.model.fold import FoldedCNN
from vidcap.model.frames import DEFAULT as DEFAULT_FEATURES
from vidcap.model.frames import create_frame_features
from vidcap.tokens import MAX_LEN


@dataclass
class CaptionConfig:
    """Settings of every architecture; each architecture's config adds its own (its sizes)."""

    vocab_size: int
    arch: str = ""  # set by each architecture's config: the name it is registered under
    backbone: str = "inception_resnet_v2"
    backbone_weights: str | None = None
    pretrained: bool = True
    image_size: int | None = None  # frame side; None: the backbone's own input size
    # The backbone's input normalisation; None: its pretrained config's (filled in when the model is
    # built, so checkpoints carry it and decode exactly as they were trained).
    pixel_mean: tuple[float, float, float] | None = None
    pixel_std: tuple[float, float, float] | None = None
    n_frames: int = 5
    # Standardise the pooled CNN features with fixed training-set statistics before FC (the trainer
    # sets them at the start of stage 1); an affine map the FC could learn, but fast to optimise.
    feature_norm: bool = False
    # How a clip's frames become per-frame features: an entry of model/frames.py's registry
    # ("pooled", the paper's global average; "grid"; "focus", model/focus.py) and that entry's own
    # settings (``model.focus.track=true`` on the command line), completed with its defaults when the
    # model is built, so checkpoints and model folders carry them all.
    features: str = DEFAULT_FEATURES
    features_config: dict = field(default_factory=dict)
    max_len: int = MAX_LEN
    n_attributes: int = 400

    @classmethod
    def from_dict(cls, d: dict) -> CaptionConfig:
        names = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in d.items() if k in names})
        for key in ("pixel_mean", "pixel_std"):  # a checkpoint may hold them as lists
            if getattr(out, key) is not None:
                setattr(out, key, tuple(float(x) for x in getattr(out, key)))
        return out


class VideoCaptioner(nn.Module):
    """Base of every architecture: CNN + preprocessing, attribute head input, freezing, decoders.

    A subclass builds its layers after calling this __init__, creates ``self.attr_head`` (a Linear
    from the CNN's feature width to n_attributes) and implements forward / encode / step / reorder.
    """

    def __init__(self, cfg: CaptionConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone, self.backbone_info = create_backbone(cfg.backbone, cfg.backbone_weights, cfg.pretrained)
        # NHWC: oneDNN's CPU convolutions (and cuDNN's bf16 ones) run faster on it. Lite0 at 160 px, 2 cores:
        # forward 1.7x, forward + backward 1.5x; the features differ from NCHW's by float rounding (~5e-5).
        self.backbone.to(memory_format=torch.channels_last)
        info = self.backbone_info
        cfg.image_size = cfg.image_size or info.input_size
        cfg.pixel_mean = tuple(cfg.pixel_mean or info.mean)
        cfg.pixel_std = tuple(cfg.pixel_std or info.std)
        # the entry checks its own settings; what it returns is complete, so the config records every one
        self.frames = create_frame_features(cfg.features, cfg.features_config, self.backbone, info.feature_dim)
        cfg.features_config = asdict(self.frames.cfg)
        self.blocks = self.frames.blocks  # a frame's features: blocks side by side (block_balance)
        self.feature_dim = d = self.frames.dim
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("feat_mean", torch.zeros(d), persistent=cfg.feature_norm)
        self.register_buffer("feat_std", torch.ones(d), persistent=cfg.feature_norm)
        self.backbone_frozen = False
        self.bn_stats = False
        self._folded = FoldedCNN()
        self.trunk_blocks = 0  # set_trunk: the first blocks frozen, their maps cached (model/trunk.py)
        self._trunk_io: list | torch.Tensor | None = None  # while caching: where the trunk's maps go; in a step: them

    # ---- backbone ---------------------------------------------------------------------------
    def freeze_backbone(self, frozen: bool = True, bn_stats: bool = False) -> None:
        """Frozen: no gradients and BatchNorm in eval mode even under model.train().

        Unfrozen with bn_stats=False (the default) trains every weight but keeps BatchNorm on its
        running statistics: 16 clips x 5 correlated frames make poor batch statistics, and
        switching a trained captioner's CNN to them at once shifts its features (measured on the
        built-in data: greedy CIDEr-D on training clips fell from 1.4 to 0.24 at the first step).
        """
        self.backbone_frozen = frozen
        self.bn_stats = bn_stats and not frozen
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def set_trunk(self, k: int) -> None:
        """Train only the CNN's blocks above its first `k` (and stem): those are frozen, and the feature
        cache keeps their output per clip beside the frames (model/trunk.py). 0: the whole CNN."""
        if k:
            trunk.check_trunk(self.backbone, k, self.cfg.backbone)
            for _, m in trunk.trunk_modules(self.backbone, k):
                m.requires_grad_(False)
        self.trunk_blocks = k

    def cached_cnn_state(self) -> dict[str, torch.Tensor]:
        """The CNN weights the feature cache depends on: the whole backbone's, or the trunk's alone."""
        return trunk.trunk_state(self.backbone, self.trunk_blocks) if self.trunk_blocks else self.backbone.state_dict()

    def train(self, mode: bool = True) -> VideoCaptioner:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        elif not self.bn_stats:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    @contextmanager
    def cnn_pass(self, pixels: torch.Tensor) -> Iterator[tuple[nn.Module, torch.Tensor]]:
        """Frames (B, K, 3, H, W) float in [0, 255] -> (the CNN to run, its input (B*K, 3, H, W)), inside
        the grad mode the pass needs. The one place where pixels are normalised for the backbone; a
        pass that trains no CNN weight runs the BatchNorm-folded copy (model/fold.py)."""
        if self._trunk_io is not None:  # trunk_blocks: the blocks above the trunk, over its output
            yield from self._top_pass(pixels)
            return
        x = self._normalise(pixels)
        cnn_grad = torch.is_grad_enabled() and not self.backbone_frozen
        cnn = self.backbone if cnn_grad or not FoldedCNN.usable(self.backbone) else self._folded.get(self.backbone, x)
        with torch.set_grad_enabled(cnn_grad):
            yield cnn, x

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.flatten(0, 1) / 255
        return ((x - self.pixel_mean) / self.pixel_std).contiguous(memory_format=torch.channels_last)

    def _top_pass(self, pixels: torch.Tensor) -> Iterator[tuple[trunk.TopCNN, torch.Tensor]]:
        """cnn_pass under trunk_blocks: while the cache is built, the trunk runs on the frames the entry
        passes (compensated, where its cues say so) and its output is recorded; in a step it is replayed."""
        top = trunk.TopCNN(self.backbone, self.trunk_blocks)
        if isinstance(self._trunk_io, list):
            with torch.no_grad():
                t = trunk.run_trunk(self.backbone, self._normalise(pixels), self.trunk_blocks)
                self._trunk_io.append(t)
                yield top, t
            return
        t = self._trunk_io
        if t.shape[:2] != pixels.shape[:2]:
            raise RuntimeError(f"cached trunk maps of {tuple(t.shape[:2])} clips x frames, the frames are "
                               f"{tuple(pixels.shape[:2])}")
        yield top, t.flatten(0, 1).contiguous(memory_format=torch.channels_last)

    @contextmanager
    def _trunk(self, io: list | torch.Tensor) -> Iterator[None]:
        self._trunk_io = io
        try:
            yield
        finally:
            self._trunk_io = None

    def frame_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K, 3, H, W) uint8 or float in [0, 1] -> per-frame features (B, K, D), by the entry
        ``model.features`` names; one CNN batch of B*K."""
        return self.frames(self._pixels(images), self.cnn_pass)

    def cacheable_features(self, images: torch.Tensor) -> torch.Tensor:
        """What the feature cache keeps of clips while the CNN is frozen; ``features_from_cache`` turns
        it into ``frame_features``'s output (the same tensor for an entry without weights). Under
        ``set_trunk``: the clips' frames and the trunk's maps of them."""
        if self.trunk_blocks:
            maps: list[torch.Tensor] = []
            with self._trunk(maps):
                self.frames(self._pixels(images), self.cnn_pass)
            if len(maps) != 1:
                raise RuntimeError(f"model.features={self.cfg.features} ran the CNN {len(maps)} times per clip; "
                                   "trunk_blocks caches one pass")
            return {"frames": images, "trunk": maps[0].reshape(*images.shape[:2], *maps[0].shape[1:])}  # per clip
        return self.frames.cache(self._pixels(images), self.cnn_pass)

    def features_from_cache(self, cached: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        if isinstance(cached, dict) and "trunk" in cached:  # set_trunk's: the entry over the blocks above the trunk
            with self._trunk(cached["trunk"]):
                return self.frames(self._pixels(cached["frames"]), self.cnn_pass)
        return self.frames.from_cache(cached)

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.pixel_mean.dtype
        return images.to(dtype) if images.dtype == torch.uint8 else images.to(dtype) * 255

    # ---- pooled features and the attribute head -----------------------------------------------
    def set_feature_stats(self, feats: torch.Tensor) -> None:
        """Fix the standardisation from training features (N, K, D): per-dimension mean and std."""
        self.feat_mean.copy_(feats.mean((0, 1)))
        floor = self.frames.std_floor().to(feats.device)
        self.feat_std.copy_(torch.maximum(feats.std((0, 1)), floor) * self.block_balance())

    def block_balance(self) -> torch.Tensor:
        """Per-dimension divisor that gives each block of a frame's features the same total variance
        after standardisation: the focus block (a few hundred dimensions) beside the grid (thousands)
        would otherwise be a few percent of the FC's input and ignored -- though a linear probe reads
        the moving object's colour and shape from it alone on every clip (built-in data, val)."""
        scale = torch.ones(self.feature_dim, device=self.feat_std.device)
        start = self.blocks[0]
        for size in self.blocks[1:]:  # the first block's dimensions keep 1; each later block gets as much variance
            scale[start : start + size] = (size / self.blocks[0]) ** 0.5
            start += size
        return scale

    def _normed(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.feat_mean) / self.feat_std if self.cfg.feature_norm else feats

    def attribute_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """One logit per attribute from the temporal mean of the pooled CNN features (the paper's head)."""
        return self.attr_head(self._normed(feats).mean(1))

    # ---- the step interface (each architecture) -----------------------------------------------
    def forward(self, feats: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log-probs (B, T, V) for targets `captions` (B, T) (ending in <eos>, PAD after)."""
        raise NotImplementedError

    def encode(self, feats: torch.Tensor, max_len: int) -> Any:
        """The decoder state for B clips, before the first word (max_len: steps the decoder may take)."""
        raise NotImplementedError

    def step(self, state: Any, words: torch.Tensor, t: int) -> tuple[torch.Tensor, Any]:
        """Log-probs (R, V) of word t given the previous words (R,) (<bos> at t = 0), and the next state."""
        raise NotImplementedError

    def reorder(self, state: Any, index: torch.Tensor) -> Any:
        """The state of rows `index` (repeat rows to expand, pick rows to follow beam survivors)."""
        raise NotImplementedError

    # ---- decoders (model/decoding.py, the same for every architecture) ------------------------
    def sample(self, feats: torch.Tensor, n: int = 1, temperature: float = 1.0, greedy: bool = False,
               max_len: int | None = None, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return decoding.sample(self, feats, n, temperature, greedy, max_len, generator)

    def greedy(self, feats: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        return decoding.greedy(self, feats, max_len)

    def beam(self, feats: torch.Tensor, k: int = 3, max_len: int | None = None) -> torch.Tensor:
        return decoding.beam(self, feats, k, max_len)

    # ---- bookkeeping ----------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        cnn = sum(p.numel() for p in self.backbone.parameters())
        return {"total": total, "backbone": cnn, "captioner": total - cnn}

    def config_dict(self) -> dict:
        return asdict(self.cfg)
