"""What every caption architecture shares, so that the trainer, the feature cache, ``train eval``,
``caption`` and the probes never need to know which one they hold:

- the CNN over the K frames of a clip, with its backbone's own preprocessing (mean, std and input
  size from its pretrained config, stored in the model config and so in every checkpoint);
  ``frame_features`` is the one place where pixels are normalised;
- freezing (stages 1-2) and BatchNorm handling when the CNN trains (stage 3);
- optional standardisation of the pooled features (``feature_norm``) and the attribute head's
  input (temporal mean of the pooled features);
- the decoders (``sample``, ``greedy``, ``beam``), written once in model/decoding.py on top of the
  step interface each architecture implements: ``encode``, ``step``, ``reorder``; plus ``forward``
  (teacher-forced log-probs) for cross-entropy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vidcap.model import camera, decoding
from vidcap.model.backbones import create_backbone
from vidcap.model.fold import FoldedCNN
from vidcap.tokens import MAX_LEN

# the camera options' values (CaptionConfig; model/camera.py)
CAMERA_OPTIONS = {"exposure": ("none", "gain"), "stabilize": ("none", "similarity"),
                  "saliency": ("deviation", "robust"), "foreground": ("deviation", "filled")}
POOLS = ("avg", "grid", "grid3", "focus")  # model.pool
GRID_SIDE = {"grid": 2, "grid3": 3, "focus": 2}  # the scene block's grid per pool (avg: 1)


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
    # How the CNN's feature map becomes a frame's features. "avg": global average (the paper's: one
    # D-vector). "grid": the average over each cell of a 2x2 grid (4D); "grid3": 3x3 (9D). Global
    # pooling throws away where things are, so a clip moving left and one moving right give nearly the
    # same frames' features (Lite0, built-in data: a frame and its mirror image have centred cosine
    # 0.92); a grid keeps coarse position, and motion shows as features moving between cells.
    # "focus": the 2x2 grid plus the stride-8 and stride-16 maps averaged over where the clip moves
    # (``motion_focus``): with two objects in a clip, a grid's cells mix the moving one with the
    # still one, and the captioner named the other object's colour (51 of 76 two-object colour errors).
    pool: str = "avg"
    # Undoing the camera before the motion cues (model/camera.py; each "none" = as before, the paper's):
    # exposure "gain" matches each frame's brightness to the clip's middle frame; stabilize
    # "similarity" warps each frame onto the middle frame's view (camera shift and zoom measured by
    # phase correlation); saliency "robust" makes focus pooling weigh by deviation from the temporal
    # median of blurred frames above the clip's noise floor (default "deviation": from the mean).
    exposure: str = "none"
    stabilize: str = "none"
    # The share of the stabiliser's 49 blocks that must agree on a camera motion before a frame is
    # warped (model/camera.py). 0.5 is what every model trained before this setting used; lower
    # corrects more frames of textured scenes and locks onto a large object over a plain wall.
    stabilize_share: float = 0.5
    saliency: str = "deviation"
    # Where what moves is, frame by frame: the centroid, spread and mass of each frame's foreground
    # (its deviation from the clip's temporal median, model/camera.py) as 5 more numbers per frame.
    # Motion words are about where the object goes; pooled CNN features say it only through which
    # grid cell changes, which clutter and photographs behind the object drown.
    track: bool = False
    # The last map pooled over the frame (``pool``'s grid, or its average): the whole scene, the
    # background included. False (``pool="focus"`` only) leaves a frame's features to what moves --
    # its focus block and track. Measured on the realistic built-in world (seed 0, linear probes of
    # the frozen CNN's features, 840 train clips, test): the focus block and track alone (157
    # numbers) read action / colour / shape at 95.0 / 90.8 / 87.1%, with the 2x2 grid beside them
    # (5,277) 83.7 / 82.5 / 82.5% -- the grid's 5,120 numbers describe the background, and a model fitted
    # on 840 clips learns the backgrounds.
    scene: bool = True
    # A second focus block (``pool="focus"`` only): each frame's fine maps averaged over where the
    # foreground is in that frame (``camera.frame_foreground``), not over everywhere the clip moves.
    # The clip's saliency covers the object's path, so in each frame most of its weight lies on the
    # background the object has left or will reach; the frame's own foreground is the object. Linear
    # probes (realistic world, seed 0, frozen CNN, test): colour 90.4 -> 93.3%, shape 88.7 -> 94.6%
    # with it beside the focus block and track; the action comes from the clip's block and the track.
    frame_focus: bool = False
    # What the frame-focus block pools over in each frame (no effect without it, so that
    # ``model.frame_focus=false`` alone switches the block off): "deviation" (the default, cpu-small's),
    # the frame's deviation from the clip's temporal median; "filled", that foreground as a region -- its
    # strong cells and everything they enclose (``camera.filled_foreground``): an object that overlaps
    # itself over the clip deviates only along its outline. Linear probes of the clip's mean read more
    # from the region (realistic world, seed 0, 5-fold over 1,080 clips: all three slots 87.3 -> 89.0%),
    # but the captioner less: stage 1 over seeds 0-2, paired over 720 test clips, all three -3.2 +- 1.5
    # points (docs/real-world.md). Kept as a setting, not in a preset.
    foreground: str = "deviation"
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


def deviation_saliency(images: torch.Tensor) -> torch.Tensor:
    """Where the clip moves (B, H, W): the pixels' mean absolute deviation from the clip's temporal
    mean -- exact for a static, noise-free camera, and blind to everything else (model/camera.py
    has the robust one)."""
    px = images.float()
    return (px - px.mean(1, keepdim=True)).abs().mean((1, 2))


def motion_focus(motion: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
    """Each frame's feature map (B, K, C, h, w) averaged over where the clip moves: (B, K, C); with
    `motion` (B, K, H, W), each frame over its own map (where the foreground is in that frame).

    The weights are a saliency map (B, H, W) of how much each pixel changes over the clip, averaged
    over each cell of the map and normalised to sum 1 per clip -- a fixed, parameter-free saliency
    (no flow network). Pooling over the moving region binds what moves to what it looks like; a
    grid of the last map mixes a moving object with a still one in the same or a neighbouring cell.
    """
    b, k, c, h, w = fmap.shape
    per_frame = motion.dim() == 4  # (B, K, H, W): one map of weights per frame (CaptionConfig.frame_focus)
    cells = F.adaptive_avg_pool2d(motion.flatten(0, 1)[:, None] if per_frame else motion[:, None], (h, w))
    weights = cells.flatten(1) + 1e-6  # (B*K or B, h*w)
    weights = (weights / weights.sum(1, keepdim=True)).to(fmap.dtype)
    if per_frame:
        return torch.einsum("bkcn,bkn->bkc", fmap.flatten(3), weights.view(b, k, -1))
    return torch.einsum("bkcn,bn->bkc", fmap.flatten(3), weights)


def focus_levels(backbone: nn.Module) -> list[tuple[int, int]]:
    """(feature_info index, channels) of the maps at strides 8 and 16, where a timm backbone has them:
    their cells are small enough to hold one object (the last map's receptive fields hold the whole
    frame). An empty list: focus on the last map."""
    info = getattr(backbone, "feature_info", None)
    if info is None or not hasattr(backbone, "forward_intermediates"):
        return []
    entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
    return [(i, int(e["num_chs"])) for i, e in enumerate(entries) if e.get("reduction") in (8, 16)]


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
        if cfg.pool not in POOLS:
            raise ValueError(f"model.pool={cfg.pool!r}: must be one of {', '.join(POOLS)}")
        for key, allowed in CAMERA_OPTIONS.items():
            if getattr(cfg, key) not in allowed:
                raise ValueError(f"model.{key}={getattr(cfg, key)!r}: must be one of {', '.join(allowed)}")
        if not 0.0 < cfg.stabilize_share <= 1.0:
            raise ValueError(f"model.stabilize_share={cfg.stabilize_share!r}: must be in (0, 1]")
        if not cfg.scene and cfg.pool != "focus":
            raise ValueError(f"model.scene=false needs model.pool=focus (with pool={cfg.pool!r} a frame would have no features)")
        if cfg.frame_focus and cfg.pool != "focus":
            raise ValueError(f"model.frame_focus=true needs model.pool=focus (not {cfg.pool!r})")
        self.focus_levels = focus_levels(self.backbone) if cfg.pool == "focus" else []
        # a frame's features: blocks side by side -- the scene (grid or average), focus, frame focus, track
        self.blocks = [info.feature_dim * GRID_SIDE.get(cfg.pool, 1) ** 2] if cfg.scene else []
        if cfg.pool == "focus":  # the fine maps' channels, or the last map's where a backbone has no fine maps
            self.blocks.append(sum(c for _, c in self.focus_levels) if self.focus_levels else info.feature_dim)
            if cfg.frame_focus:
                self.blocks.append(self.blocks[-1])
        if cfg.track:
            self.blocks.append(camera.TRACK_DIM)
        self.feature_dim = d = sum(self.blocks)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("feat_mean", torch.zeros(d), persistent=cfg.feature_norm)
        self.register_buffer("feat_std", torch.ones(d), persistent=cfg.feature_norm)
        self.backbone_frozen = False
        self.bn_stats = False
        self._folded = FoldedCNN()

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

    def train(self, mode: bool = True) -> VideoCaptioner:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        elif not self.bn_stats:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def compensate(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The clip's frames as the CNN sees them, (B, K, 3, H, W) float in [0, 255] -- exposure
        matched and the camera's motion undone where the config says so -- and where a warp left no
        pixels (None without stabilisation)."""
        dtype = self.pixel_mean.dtype
        x = images.to(dtype) if images.dtype == torch.uint8 else images.to(dtype) * 255
        valid = None
        with torch.no_grad():  # parameter-free: nothing to learn through it
            if self.cfg.exposure == "gain":
                x = camera.exposure_gain(x)
            if self.cfg.stabilize == "similarity":
                x, valid = camera.stabilize(x, self.cfg.stabilize_share)
        return x, valid

    def saliency(self, frames: torch.Tensor, valid: torch.Tensor | None,
                 deviation: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.saliency == "robust":
            return camera.robust_saliency(frames, valid, deviation)
        return deviation_saliency(frames)

    def frame_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K, 3, H, W) uint8 or float in [0, 1] -> pooled features (B, K, D); one CNN batch of B*K."""
        b, k = images.shape[:2]
        frames, valid = self.compensate(images)
        x = frames.flatten(0, 1) / 255
        x = ((x - self.pixel_mean) / self.pixel_std).contiguous(memory_format=torch.channels_last)
        # the robust saliency, the frame focus and the track start from the same blurred deviation:
        # computed once where two of them need it
        users = self.cfg.track + self.cfg.frame_focus + (self.cfg.pool == "focus" and self.cfg.saliency == "robust")
        deviation = camera.median_deviation(frames) if users >= 2 else None
        track = [camera.track_features(frames, valid, deviation)] if self.cfg.track else []
        cnn_grad = torch.is_grad_enabled() and not self.backbone_frozen
        # a pass that trains no CNN weight runs the BatchNorm-folded copy (model/fold.py)
        cnn = self.backbone if cnn_grad or not FoldedCNN.usable(self.backbone) else self._folded.get(self.backbone, x)
        with torch.set_grad_enabled(cnn_grad):
            if self.cfg.pool == "avg":
                return torch.cat([cnn(x).view(b, k, -1), *[t.to(x.dtype) for t in track]], 2)
            if self.focus_levels and not self.cfg.scene:  # the last map unused: the CNN stops at stride 16
                fmap = None
                fine = cnn.forward_intermediates(x, indices=[i for i, _ in self.focus_levels], stop_early=True,
                                                 intermediates_only=True)
            elif self.focus_levels:
                fmap, fine = cnn.forward_intermediates(x, indices=[i for i, _ in self.focus_levels])
            else:
                fmap = cnn.forward_features(x)
                fine = [fmap] if self.cfg.pool == "focus" else []
            scene = [F.adaptive_avg_pool2d(fmap, GRID_SIDE[self.cfg.pool]).flatten(1).view(b, k, -1)] if self.cfg.scene else []
            motion = self.saliency(frames, valid, deviation) if fine else None
            focus = [motion_focus(motion, m.view(b, k, *m.shape[1:])) for m in fine]
            if self.cfg.frame_focus:
                where = camera.frame_foreground(frames, valid, deviation)
                if self.cfg.foreground == "filled":
                    where = camera.filled_foreground(where)
                focus += [motion_focus(where, m.view(b, k, *m.shape[1:])) for m in fine]
            return torch.cat([*scene, *focus, *[t.to(focus[0].dtype) for t in track]], 2)

    # ---- pooled features and the attribute head -----------------------------------------------
    def set_feature_stats(self, feats: torch.Tensor) -> None:
        """Fix the standardisation from training features (N, K, D): per-dimension mean and std."""
        self.feat_mean.copy_(feats.mean((0, 1)))
        self.feat_std.copy_(feats.std((0, 1)).clamp_min(1e-4) * self.block_balance())

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
