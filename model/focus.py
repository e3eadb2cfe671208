"""``model.features=focus``: a frame is what moves in it -- cpu-small's frame features, built from
parameter-free cues (model/camera.py) around the CNN, in the order they run:

1. undo the camera: exposure matched, camera shift and zoom compensated (``exposure``, ``stabilize``,
   ``stabilize_share``), without gradients -- nothing to learn through them;
2. run the CNN once on the B*K compensated frames; read its stride-8 and stride-16 maps (``focus_levels``)
   and, with ``scene``, the last map (else the CNN stops at stride 16);
3. blocks, side by side: the scene (the last map's 2x2 grid), the focus block (the fine maps averaged
   over where the clip moves: ``saliency``), the frame-focus block (each frame's fine maps over that
   frame's own foreground: ``frame_focus``, ``foreground``) and the track (where the foreground is,
   5 numbers a frame: ``track``).

Why. With two objects in a clip, a grid's cells mix the moving one with the still one, and the
captioner named the other object's colour (51 of 76 two-object colour errors); pooling over the moving
region binds what moves to what it looks like. The settings' measured reasons are beside each field.
These cues weigh pixels by how much they change: they read the built-in renderer well and real
footage (walking people, traffic) poorly -- see docs/real-world.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vidcap.model import camera
from vidcap.model.frames import CNNPass, FeaturesConfig, FrameFeatures, register_frame_features
from vidcap.model.heads import AttentionHeads, attention_where

SCENE_GRID = 2  # the scene block: the last map's 2x2 grid


@dataclass
class FocusConfig(FeaturesConfig):
    CHOICES: ClassVar[dict[str, tuple]] = {"exposure": ("none", "gain"), "stabilize": ("none", "similarity"),
                                           "saliency": ("deviation", "robust"), "foreground": ("deviation", "filled"),
                                           "heads": (0, 1, 2, 3, 4)}
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {"stabilize_share": (0.01, 1.0)}

    # "gain": each frame's brightness matched to the clip's middle frame ("none": as the frames come).
    exposure: str = "none"
    # "similarity": each frame warped onto the middle frame's view (camera shift and zoom measured by
    # phase correlation, model/camera.py).
    stabilize: str = "none"
    # The share of the stabiliser's 49 blocks that must agree on a camera motion before a frame is
    # warped. 0.5 is what every model trained before this setting used; lower corrects more frames of
    # textured scenes and locks onto a large object over a plain wall (docs/real-world.md).
    stabilize_share: float = 0.5
    # What the focus block weighs by: "deviation" from the clip's temporal mean, or "robust": from the
    # temporal median of blurred frames above the clip's noise floor.
    saliency: str = "deviation"
    # Where what moves is, frame by frame: the centroid, spread and mass of each frame's foreground as
    # 5 more numbers per frame. Motion words are about where the object goes; pooled CNN features say
    # it only through which grid cell changes, which clutter and photographs behind the object drown.
    track: bool = False
    # The last map's 2x2 grid: the whole scene, the background included. False leaves a frame's
    # features to what moves. Realistic built-in world (seed 0, linear probes of the frozen CNN, 840
    # train clips, test): the focus block and track alone (157 numbers) read action / colour / shape at
    # 95.0 / 90.8 / 87.1%, with the grid beside them (5,277) 83.7 / 82.5 / 82.5% -- the grid's 5,120
    # numbers describe the background, and a model fitted on 840 clips learns the backgrounds.
    scene: bool = True
    # A second focus block: each frame's fine maps averaged over where the foreground is in that frame,
    # not over everywhere the clip moves. The clip's saliency covers the object's path, so in each frame
    # most of its weight lies on background the object has left or will reach. Probes (same as above):
    # colour 90.4 -> 93.3%, shape 88.7 -> 94.6%.
    frame_focus: bool = False
    # What the frame-focus block pools over: "deviation", the frame's deviation from the clip's temporal
    # median; "filled", that foreground as a region -- its strong cells and all they enclose
    # (camera.filled_foreground). Probes read more from the region (all three slots 87.3 -> 89.0%, 5-fold
    # over 1,080 clips), the captioner less (stage 1, seeds 0-2: -3.2 +- 1.5 points): in no preset.
    foreground: str = "deviation"
    # Learned where-to-look beside the rules (issue 37): this many attention heads over the fine maps
    # (model/heads.py), each scoring a frame's cells from their CNN channels and the hand-made cue there
    # (the frame's foreground with frame_focus, else the clip's saliency) -- so it may follow the cue
    # where the cue is right and overrule it where much moves (real footage) -- adding per head the
    # attended channels and where it looks (centroid and spread). 0: the rules alone.
    heads: int = 0

    def check(self, name: str) -> None:
        if self.foreground != "deviation" and not self.frame_focus:
            raise ValueError(f"model.{name}.foreground={self.foreground} needs model.{name}.frame_focus=true "
                             "(it is what the frame-focus block pools over)")


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
    per_frame = motion.dim() == 4  # (B, K, H, W): one map of weights per frame (frame_focus)
    cells = F.adaptive_avg_pool2d(motion.flatten(0, 1)[:, None] if per_frame else motion[:, None], (h, w))
    weights = cells.flatten(1) + 1e-6  # (B*K or B, h*w)
    weights = (weights / weights.sum(1, keepdim=True)).to(fmap.dtype)
    if per_frame:
        return torch.einsum("bkcn,bkn->bkc", fmap.flatten(3), weights.view(b, k, -1))
    return torch.einsum("bkcn,bn->bkc", fmap.flatten(3), weights)


def cue_cells(cue: torch.Tensor, k: int, size: tuple[int, int]) -> torch.Tensor:
    """A hand-made cue -- (B, K, H, W) per frame or (B, H, W) per clip -- at the maps' cells, each frame's
    scaled to a largest cell of 1: (B, K, 1, h, w), a channel the learned heads read beside the CNN's."""
    per_frame = cue if cue.dim() == 4 else cue[:, None].expand(-1, k, -1, -1)
    cells = F.adaptive_avg_pool2d(per_frame.float(), size)
    return (cells / (cells.flatten(2).amax(-1)[..., None, None] + 1e-6))[:, :, None]


def focus_levels(backbone: nn.Module) -> list[tuple[int, int]]:
    """(feature_info index, channels) of the maps at strides 8 and 16, where a timm backbone has them:
    their cells are small enough to hold one object (the last map's receptive fields hold the whole
    frame). An empty list: focus on the last map."""
    info = getattr(backbone, "feature_info", None)
    if info is None or not hasattr(backbone, "forward_intermediates"):
        return []
    entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
    return [(i, int(e["num_chs"])) for i, e in enumerate(entries) if e.get("reduction") in (8, 16)]


@register_frame_features("focus")
class Focus(FrameFeatures):
    Config = FocusConfig

    def __init__(self, cfg: FocusConfig, backbone: nn.Module, feature_dim: int):
        super().__init__(cfg, backbone, feature_dim)
        self.levels = focus_levels(backbone)
        # the fine maps' channels, or the last map's where a backbone has no fine maps
        fine = sum(c for _, c in self.levels) if self.levels else feature_dim
        self.blocks = ([feature_dim * SCENE_GRID**2] if cfg.scene else []) + [fine] + \
                      ([fine] if cfg.frame_focus else []) + ([camera.TRACK_DIM] if cfg.track else [])
        self.learned = cfg.heads > 0
        if cfg.heads:  # the fine maps' channels and the cue, scored per cell
            self.score = AttentionHeads(fine + 1, cfg.heads)
            self.blocks += [fine] * cfg.heads + [3 * cfg.heads]

    def compensate(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The frames as the CNN sees them -- exposure matched and the camera's motion undone where the
        config says so -- and where a warp left no pixels (None without stabilisation)."""
        valid = None
        with torch.no_grad():  # parameter-free: nothing to learn through it
            if self.cfg.exposure == "gain":
                frames = camera.exposure_gain(frames)
            if self.cfg.stabilize == "similarity":
                frames, valid = camera.stabilize(frames, self.cfg.stabilize_share)
        return frames, valid

    def saliency(self, frames: torch.Tensor, valid: torch.Tensor | None,
                 deviation: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.saliency == "robust":
            return camera.robust_saliency(frames, valid, deviation)
        return deviation_saliency(frames)

    def forward(self, frames: torch.Tensor, cnn_pass: CNNPass) -> torch.Tensor:
        return self.from_cache(self.cache(frames, cnn_pass))

    def cache(self, frames: torch.Tensor, cnn_pass: CNNPass) -> torch.Tensor | dict[str, torch.Tensor]:
        """The cues' features (B, K, D); with ``heads``, also the maps the heads score: the fine maps at
        the coarsest one's cells and the cue there, (B, K, C + 1, h, w)."""
        cues, maps = self._cues(frames, cnn_pass)
        return {"cues": cues, "maps": maps} if maps is not None else cues

    def from_cache(self, cached: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(cached, dict):
            return cached
        maps = cached["maps"]
        attended, weights = self.score.attend(maps[:, :, :-1], maps)
        return torch.cat([cached["cues"], attended, attention_where(weights)], 2)

    def std_floor(self) -> torch.Tensor:
        """The heads' centroids and spreads, constant under their uniform start, by at least 0.5 (as attend's)."""
        floor = super().std_floor()
        if self.cfg.heads:
            floor[-3 * self.cfg.heads :] = 0.5
        return floor

    def _cues(self, frames: torch.Tensor, cnn_pass: CNNPass) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg, (b, k) = self.cfg, frames.shape[:2]
        frames, valid = self.compensate(frames)
        # the robust saliency, the frame focus and the track start from the same blurred deviation:
        # computed once where two of them need it
        users = cfg.track + cfg.frame_focus + (cfg.saliency == "robust")
        deviation = camera.median_deviation(frames) if users >= 2 else None
        track = [camera.track_features(frames, valid, deviation)] if cfg.track else []
        with cnn_pass(frames) as (cnn, x):
            if self.levels and not cfg.scene:  # the last map unused: the CNN stops at stride 16
                fmap, fine = None, cnn.forward_intermediates(x, indices=[i for i, _ in self.levels], stop_early=True,
                                                             intermediates_only=True)
            elif self.levels:
                fmap, fine = cnn.forward_intermediates(x, indices=[i for i, _ in self.levels])
            else:
                fmap = cnn.forward_features(x)
                fine = [fmap]
            scene = [F.adaptive_avg_pool2d(fmap, SCENE_GRID).flatten(1).view(b, k, -1)] if cfg.scene else []
            fine = [m.view(b, k, *m.shape[1:]) for m in fine]
            motion = self.saliency(frames, valid, deviation)
            focus = [motion_focus(motion, m) for m in fine]
            where = None
            if cfg.frame_focus:
                where = camera.frame_foreground(frames, valid, deviation)
                if cfg.foreground == "filled":
                    where = camera.filled_foreground(where)
                focus += [motion_focus(where, m) for m in fine]
            cues = torch.cat([*scene, *focus, *[t.to(focus[0].dtype) for t in track]], 2)
            if not cfg.heads:
                return cues, None
            size = fine[-1].shape[-2:]
            cells = torch.cat([F.adaptive_avg_pool2d(m.flatten(0, 1), size) for m in fine], 1).reshape(b, k, -1, *size)
            return cues, torch.cat([cells.float(), cue_cells(where if where is not None else motion, k, size)], 2)
