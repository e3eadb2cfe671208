"""The nuisances of real footage, in one table: what each one is, its strengths, and the pixel
operator that applies it to frames.

Two users read this module. ``pipeline synth --world real`` draws a mix per clip and renders it into
the video (noise and photometric changes on every rendered frame before H.264, camera motion in scene
coordinates, blur as a shutter). ``train robustness`` perturbs the decoded frames of test clips with
one nuisance at a time, at each of ``STRENGTHS``, to measure what each costs a model. Both take a
nuisance's strength from the same table, so "standard" means the same thing to the generator and
to the report.

Nuisances come in two groups. ``LISTED`` are the ones issue 20 names and the realistic world
renders; ``HELD_OUT`` are camera faults the world never renders and no recipe was tuned on (a colour
cast, vignetting, low contrast, salt-and-pepper pixels, heavy JPEG, a dropped frame): the robustness
report shows both, so a recipe that only learnt the listed filters shows up as a gap between them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

Frames = np.ndarray  # (K, H, W, 3) uint8, the K sampled frames of a clip


@dataclass(frozen=True)
class Nuisance:
    name: str
    what: str  # one line for tables and --help
    unit: str
    strengths: tuple[float, ...]  # mild, standard, strong
    apply: Callable[[Frames, float, np.random.Generator], Frames]

    @property
    def standard(self) -> float:
        return self.strengths[1]


def _u8(x: np.ndarray) -> Frames:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ---- photometric -------------------------------------------------------------------------------

def add_noise(frames: Frames, sigma: float, rng: np.random.Generator) -> Frames:
    """Sensor noise: independent Gaussian noise per pixel, channel and frame (sigma on 0..255)."""
    return _u8(frames.astype(np.float32) + rng.normal(0.0, sigma, frames.shape).astype(np.float32))


def apply_gains(frames: Frames, gains: np.ndarray) -> Frames:
    """Exposure: frame k's pixels times gains[k] (flicker, auto-exposure, a drifting gain)."""
    return _u8(frames.astype(np.float32) * np.asarray(gains, np.float32)[:, None, None, None])


def flicker_gains(n: int, amplitude: float, hz: float, seconds: float, phase: float) -> np.ndarray:
    """1 + amplitude * sin(2 pi hz t + phase) at n evenly spaced times over `seconds`."""
    t = np.linspace(0.0, seconds, n)
    return 1.0 + amplitude * np.sin(2 * np.pi * hz * t + phase)


def _flicker(frames: Frames, amplitude: float, rng: np.random.Generator) -> Frames:
    # 5 frames of a 2 s clip sampled from mains-light or auto-exposure flicker: the phase each sampled
    # frame sees is effectively random, so the gains are drawn as the flicker's values at random times.
    phases = rng.uniform(0, 2 * np.pi, len(frames))
    return apply_gains(frames, 1.0 + amplitude * np.sin(phases))


def _drift(frames: Frames, total: float, rng: np.random.Generator) -> Frames:
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return apply_gains(frames, np.linspace(1.0, 1.0 + sign * total, len(frames)))


# ---- geometric (the camera) -----------------------------------------------------------------------

def warp(frame: np.ndarray, dx: float, dy: float, scale: float) -> np.ndarray:
    """One frame seen by a camera moved by (dx, dy) pixels and zoomed by `scale` about the centre;
    the border is filled by the nearest edge pixels (as a stabiliser or a crop would show it)."""
    h, w = frame.shape[:2]
    pad = int(np.ceil(max(abs(dx), abs(dy)) + max(w, h) * max(0.0, 1 / scale - 1) / 2)) + 2
    src = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    a = 1.0 / scale
    cx, cy = w / 2 + pad + dx, h / 2 + pad + dy
    data = (a, 0.0, cx - a * w / 2, 0.0, a, cy - a * h / 2)
    img = Image.fromarray(src).transform((w, h), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    return np.asarray(img)


def camera(frames: Frames, offsets: np.ndarray, scales: np.ndarray) -> Frames:
    """Each frame k through `warp` with offsets[k] = (dx, dy) in pixels and scales[k]."""
    return np.stack([warp(f, float(o[0]), float(o[1]), float(s)) for f, o, s in zip(frames, offsets, scales, strict=True)])


def _shake(frames: Frames, frac: float, rng: np.random.Generator) -> Frames:
    w = frames.shape[2]
    return camera(frames, rng.normal(0.0, frac * w, (len(frames), 2)), np.ones(len(frames)))


def _pan(frames: Frames, frac: float, rng: np.random.Generator) -> Frames:
    w = frames.shape[2]
    angle = rng.uniform(0, 2 * np.pi)
    t = np.linspace(0.0, 1.0, len(frames))[:, None]
    return camera(frames, t * frac * w * np.array([np.cos(angle), np.sin(angle)]), np.ones(len(frames)))


def _zoom(frames: Frames, factor: float, rng: np.random.Generator) -> Frames:
    f = factor if rng.random() < 0.5 else 1.0 / factor
    return camera(frames, np.zeros((len(frames), 2)), f ** np.linspace(0.0, 1.0, len(frames)))


# ---- optics and the scene ---------------------------------------------------------------------------

def _blur(frames: Frames, radius: float, rng: np.random.Generator) -> Frames:
    return np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(radius))) for f in frames])


def _occlude(frames: Frames, frac: float, rng: np.random.Generator) -> Frames:
    """A static grey bar in front of the scene, `frac` of the frame wide, through the middle third."""
    out = frames.copy()
    k, h, w, _ = frames.shape
    vertical = rng.random() < 0.5
    side = w if vertical else h
    width = max(1, int(round(frac * side)))
    start = int(rng.integers(side // 3, max(side // 3 + 1, 2 * side // 3 - width)))
    level = int(rng.integers(60, 200))
    if vertical:
        out[:, :, start : start + width] = level
    else:
        out[:, start : start + width] = level
    return out


# ---- held out: never rendered by the world, never tuned on -----------------------------------------

def _colour_cast(frames: Frames, strength: float, rng: np.random.Generator) -> Frames:
    cast = 1.0 + strength * rng.uniform(-1, 1, 3)
    return _u8(frames.astype(np.float32) * cast.astype(np.float32))


def _vignette(frames: Frames, strength: float, rng: np.random.Generator) -> Frames:
    h, w = frames.shape[1:3]
    y, x = np.mgrid[0:h, 0:w]
    r2 = ((x - w / 2) / (w / 2)) ** 2 + ((y - h / 2) / (h / 2)) ** 2
    return _u8(frames.astype(np.float32) * (1.0 - strength * r2 / 2)[None, :, :, None])


def _low_contrast(frames: Frames, strength: float, rng: np.random.Generator) -> Frames:
    f = frames.astype(np.float32)
    return _u8(128 + (f - 128) * (1.0 - strength))


def _salt_pepper(frames: Frames, fraction: float, rng: np.random.Generator) -> Frames:
    out = frames.copy()
    mask = rng.random(frames.shape[:3]) < fraction
    out[mask] = np.where(rng.random(int(mask.sum())) < 0.5, 0, 255)[:, None].astype(np.uint8)
    return out


def _jpeg(frames: Frames, quality: float, rng: np.random.Generator) -> Frames:
    out = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=int(quality))
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return np.stack(out)


def _frame_drop(frames: Frames, drops: float, rng: np.random.Generator) -> Frames:
    """`drops` sampled frames replaced by their predecessor (a stalled camera or a lost packet)."""
    out = frames.copy()
    for k in sorted(rng.choice(np.arange(1, len(frames)), size=min(int(drops), len(frames) - 1), replace=False)):
        out[k] = out[k - 1]
    return out


LISTED: dict[str, Nuisance] = {n.name: n for n in (
    Nuisance("noise", "per-pixel sensor noise", "sigma (0-255)", (4.0, 8.0, 16.0), add_noise),
    Nuisance("flicker", "exposure flicker, gain 1 +- A per frame", "A", (0.03, 0.06, 0.12), _flicker),
    Nuisance("gain_drift", "exposure drifting over the clip", "total gain change", (0.1, 0.25, 0.4), _drift),
    Nuisance("shake", "hand-held camera shake", "std, fraction of width", (0.01, 0.02, 0.04), _shake),
    Nuisance("pan", "camera pans over the clip", "fraction of width", (0.05, 0.1, 0.2), _pan),
    Nuisance("zoom", "camera zooms in or out over the clip", "scale factor", (1.06, 1.12, 1.25), _zoom),
    Nuisance("blur", "defocus / motion blur", "Gaussian radius (px at 160)", (0.8, 1.5, 3.0), _blur),
    Nuisance("occlusion", "a static bar in front of the scene", "fraction of the frame", (0.06, 0.12, 0.2), _occlude),
)}
HELD_OUT: dict[str, Nuisance] = {n.name: n for n in (
    Nuisance("colour_cast", "white balance off (per-channel gain)", "max channel gain change", (0.08, 0.15, 0.3),
             _colour_cast),
    Nuisance("vignette", "darker corners", "corner darkening", (0.3, 0.5, 0.8), _vignette),
    Nuisance("low_contrast", "haze / flat exposure", "contrast lost", (0.2, 0.4, 0.6), _low_contrast),
    Nuisance("salt_pepper", "dead and hot pixels", "fraction of pixels", (0.005, 0.01, 0.03), _salt_pepper),
    Nuisance("jpeg", "heavy compression", "JPEG quality", (40.0, 20.0, 10.0), _jpeg),
    Nuisance("frame_drop", "frames repeated (stalls)", "sampled frames dropped", (1.0, 1.0, 2.0), _frame_drop),
)}
NUISANCES: dict[str, Nuisance] = {**LISTED, **HELD_OUT}


def perturb(frames: Frames, name: str, strength: float, seed: int) -> Frames:
    """`frames` under nuisance `name` at `strength`, deterministic in `seed`."""
    return NUISANCES[name].apply(frames, strength, np.random.default_rng(seed))
