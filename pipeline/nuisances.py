"""The nuisances of real footage, in one table (``NUISANCES``): for each one its unit, its three
robustness strengths, how often the realistic world renders it and the range its strength is drawn
from there, how one clip's draw is made, and the one implementation that applies it.

Two users read this table and nothing else of a nuisance. ``pipeline synth --world real``
(``pipeline.synth`` + ``pipeline.scene``) draws each listed nuisance per clip at its ``World.rate``,
its strength uniform in ``World.low``..``World.high``, the rest of the draw by the entry's ``draw``,
and renders it. ``train robustness`` perturbs the decoded frames of test clips with one nuisance at
a time, at each of ``strengths``, through ``perturb`` -- the same ``draw``, the same implementation.
A strength is in the entry's ``unit`` in both, and the shard json records it so (``record``).

Where each one acts (``kind``, in the order light meets them; the world applies them in this order):

- ``camera`` (shake, pan, zoom): a path -- the camera's offset (fractions of the frame's width) and
  scale at each time of the clip (``camera``). The world moves its camera along the path over a
  *scene* larger than the frame, for two reasons: the objects move in scene coordinates (the words
  that name their motion are relative to the scene, as people write them), and what comes into view
  at a frame's edge is more scene, not a smeared edge. ``perturb`` has only the decoded frame, so it
  moves the same path over the frame padded with its edge pixels. Both cut the view with one function,
  ``camera_view``.
- ``scene`` (occlusion): drawn into the scene in front of the objects (``scene``), so the world's
  camera moves it with the scene and the encoder sees it; ``perturb`` draws the same bar on the frame.
  The world places it across the main object's path (``Across``); ``perturb`` in the middle third.
- ``optics``, ``exposure``, ``sensor``, ``codec``: pixel operators on float frames (``pixels``), the
  same call in both (the world's frames before H.264; ``perturb``'s after decoding).
- ``backdrop`` (``real_scene``, held out): real footage behind the objects, in place of a *plain*
  background. ``train robustness`` has decoded frames, not the clip's layers; it keys the objects out
  on chroma (``pipeline.footage.object_alpha``: the clean world's backgrounds are grey and only its
  objects saturated, by its own rule) and lays held-out footage (``footage.HELD_OUT_SOURCES``, never
  in the world) behind them, so it only applies to clips whose background is plain (the clean world,
  and the realistic world's gradients without an occluder) -- ``train robustness`` scores it on those
  and beside their own clean score. Re-rendering from the clip's spec would be exact too, but a build
  keeps no spec (no positions), and the key is exact where the rule holds.

Times are fractions of the clip, 0 to 1: the world renders every frame at k / (N - 1), ``perturb``
the K sampled frames at their segment centres, (i + 0.5) / K (``sampled_times``: the frames
``pipeline build`` keeps).

Entries with ``world=None`` are **held out**: camera faults the world never renders and no recipe was
tuned on (a colour cast, vignetting, low contrast, salt-and-pepper pixels, heavy JPEG, a dropped
frame); the robustness report shows both groups, so a recipe that only learnt the listed ones shows
up as a gap between them. ``real_scene`` is held out the same way: real footage the world never
shows (``footage.HELD_OUT_SOURCES``) behind a plain-background clip's objects. A new nuisance is one
entry here (its implementation beside it): the world, ``train robustness``, its ``--nuisances``
choices and help, and the shard json follow; its row in docs/real-world.md's table is the one other
line (tests/test_nuisances.py compares the two).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vidcap.pipeline import footage

Frames = np.ndarray  # (T, H, W, 3): uint8 as decoded or encoded, float32 while a nuisance acts on it
Params = dict  # one clip's draw of a nuisance: JSON values, "strength" among them (in the entry's unit)
Across = tuple[bool, float]  # a bar across the main object's path: (vertical, its centre as a fraction)
KINDS = ("backdrop", "camera", "scene", "optics", "exposure", "sensor", "codec")
BLUR_WIDTH = 160  # blur's radius is in pixels of a frame this wide (the demo's shard size)


@dataclass(frozen=True)
class World:
    """How the realistic world renders a nuisance: on a `rate` share of its clips, the strength
    drawn uniformly in [low, high] (the entry's unit)."""

    rate: float
    low: float
    high: float


@dataclass(frozen=True)
class Nuisance:
    name: str
    what: str  # one line for tables and --help
    unit: str
    strengths: tuple[float, float, float]  # mild, standard, strong
    kind: str  # one of KINDS: where it acts, which of camera / scene / pixels implements it
    world: World | None  # None: held out, never rendered by the world
    draw: Callable[[float, np.random.Generator, Across | None], Params]
    # exactly one of the three, by kind:
    camera: Callable[[Params, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None  # times -> offsets (T, 2) in widths, scales (T,)
    scene: Callable[[ImageDraw.ImageDraw, Params, int, int, int], None] | None = None  # draw, width, height, margin
    pixels: Callable[[Frames, Params, np.ndarray, float, np.random.Generator], Frames] | None = None  # frames, times, seconds

    def __post_init__(self) -> None:
        hooks = {"camera": self.camera, "scene": self.scene}
        want = self.kind if self.kind in hooks else "pixels"
        given = [k for k, v in {**hooks, "pixels": self.pixels}.items() if v is not None]
        if self.kind not in KINDS or given != [want]:
            raise ValueError(f"nuisance {self.name}: kind {self.kind!r} needs exactly its {want} hook, got {given}")

    @property
    def standard(self) -> float:
        return self.strengths[1]

    @property
    def held_out(self) -> bool:
        return self.world is None


def _plain(strength: float, rng: np.random.Generator, across: Across | None = None) -> Params:
    """A draw that is the strength alone (what varies per frame comes from the rng at apply time)."""
    return {"strength": float(strength)}


def sampled_times(k: int) -> np.ndarray:
    """The times, in [0, 1], of the K frames a build samples: the centres of K equal segments."""
    return (np.arange(k) + 0.5) / k


def to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _gains(frames: Frames, gains: np.ndarray) -> Frames:
    return frames * np.asarray(gains, np.float32)[:, None, None, None]


# ---- the camera: shake, pan, zoom -------------------------------------------------------------------

SHAKE_CYCLES = (1.7, 3.9, 7.3)  # cycles over the clip of the three sinusoids of a hand-held camera, per axis
# the root mean square over phases of sum_j sin(.) / (j + 1): shake's strength is the offset's RMS per axis
_SHAKE_RMS = math.sqrt(sum(1 / (j + 1) ** 2 for j in range(len(SHAKE_CYCLES))) / 2)


def _draw_shake(strength: float, rng: np.random.Generator, across: Across | None = None) -> Params:
    return {"strength": float(strength), "phases": [float(v) for v in rng.uniform(0, 2 * np.pi, 2 * len(SHAKE_CYCLES))]}


def _shake(p: Params, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hand-held jitter: per axis, three sinusoids with amplitudes 1, 1/2, 1/3, scaled so the offset's
    RMS (over phases) is the strength, in widths."""
    off = np.zeros((len(times), 2))
    for axis in range(2):
        for j, f in enumerate(SHAKE_CYCLES):
            off[:, axis] += np.sin(2 * np.pi * f * times + p["phases"][len(SHAKE_CYCLES) * axis + j]) / (j + 1)
    return off * p["strength"] / _SHAKE_RMS, np.ones(len(times))


def _draw_pan(strength: float, rng: np.random.Generator, across: Across | None = None) -> Params:
    return {"strength": float(strength), "angle": float(rng.uniform(0, 2 * np.pi))}


def _pan(p: Params, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A steady travel of `strength` widths over the clip, at `angle`."""
    direction = np.array([math.cos(p["angle"]), math.sin(p["angle"])])
    return times[:, None] * p["strength"] * direction, np.ones(len(times))


def _draw_zoom(strength: float, rng: np.random.Generator, across: Across | None = None) -> Params:
    return {"strength": float(strength), "zoom_in": bool(rng.random() < 0.5)}


def _zoom(p: Params, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A geometric zoom about the centre to `strength` times (in) or 1 / `strength` (out) at the clip's end."""
    factor = p["strength"] if p["zoom_in"] else 1.0 / p["strength"]
    return np.zeros((len(times), 2)), factor ** times


def camera_path(present: dict[str, Params], times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The camera nuisances among `present` (name -> draw) together: offsets (T, 2) in widths, scales (T,)."""
    off, scale = np.zeros((len(times), 2)), np.ones(len(times))
    for name, p in present.items():
        hook = NUISANCES[name].camera
        if hook is not None:
            o, s = hook(p, np.asarray(times, np.float64))
            off, scale = off + o, scale * s
    return off, scale


def camera_view(src: Image.Image, margin: int, width: int, height: int, dx: float, dy: float,
                scale: float) -> np.ndarray:
    """What a camera moved by (dx, dy) pixels and zoomed by `scale` about the centre sees of `src`, a
    picture whose frame-sized centre lies `margin` pixels in from each edge (uint8 H x W x 3)."""
    if dx == 0 and dy == 0 and scale == 1:  # at rest: the centre, exactly
        return np.asarray(src.crop((margin, margin, margin + width, margin + height)))
    a = 1.0 / scale
    data = (a, 0.0, width / 2 + margin + dx - a * width / 2, 0.0, a, height / 2 + margin + dy - a * height / 2)
    return np.asarray(src.transform((width, height), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR))


def _move_frames(frames: Frames, offsets: np.ndarray, scales: np.ndarray) -> Frames:
    """Decoded frames through the camera path: nothing lies beyond a decoded frame, so its edge
    pixels fill what comes into view (as a stabiliser or a crop would show it)."""
    k, h, w, _ = frames.shape
    out = []
    for f, (ox, oy), s in zip(to_u8(frames), offsets * w, scales, strict=True):
        pad = int(np.ceil(max(abs(ox), abs(oy)) + max(w, h) * max(0.0, 1 / s - 1) / 2)) + 2
        src = Image.fromarray(np.pad(f, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
        out.append(camera_view(src, pad, w, h, float(ox), float(oy), float(s)))
    return np.stack(out).astype(np.float32)


# ---- the scene: occlusion ---------------------------------------------------------------------------

def _draw_occlusion(strength: float, rng: np.random.Generator, across: Across | None = None) -> Params:
    """A bar `strength` of the frame wide (of its width when vertical, its height when not): across the
    main object's path in the world (`across`), else anywhere in the middle third of the frame."""
    if across is None:
        vertical = bool(rng.random() < 0.5)
        half = strength / 2
        pos = float(rng.uniform(1 / 3 + half, max(1 / 3 + half, 2 / 3 - half)))
    else:
        vertical, centre = across
        pos = float(centre + rng.uniform(-0.06, 0.06))
    return {"strength": float(strength), "vertical": vertical, "pos": pos, "grey": int(rng.integers(40, 215))}


def _bar(draw: ImageDraw.ImageDraw, p: Params, width: int, height: int, margin: int) -> None:
    """The bar, fixed in the scene, in front of everything; the picture is the frame plus `margin` on
    each side (the world's scene canvas; 0 for a decoded frame)."""
    pos, half, fill = p["pos"], p["strength"] / 2, (p["grey"],) * 3
    if p["vertical"]:
        box = [(pos - half) * width + margin, 0, (pos + half) * width + margin, height + 2 * margin]
    else:
        box = [0, (pos - half) * height + margin, width + 2 * margin, (pos + half) * height + margin]
    draw.rectangle(box, fill=fill)


# ---- pixels: optics, exposure, sensor, codec ---------------------------------------------------------

def _blur(frames: Frames, p: Params, times: np.ndarray, seconds: float, rng: np.random.Generator) -> Frames:
    """Defocus: a Gaussian of radius `strength` pixels at BLUR_WIDTH, scaled to the frame's width."""
    radius = p["strength"] * frames.shape[2] / BLUR_WIDTH
    return np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(radius)), np.float32)
                     for f in to_u8(frames)])


def _draw_flicker(strength: float, rng: np.random.Generator, across: Across | None = None) -> Params:
    return {"strength": float(strength), "hz": float(rng.uniform(1, 6)), "phase": float(rng.uniform(0, 2 * np.pi))}


def _flicker(frames: Frames, p: Params, times: np.ndarray, seconds: float, rng: np.random.Generator) -> Frames:
    """Mains-light or auto-exposure flicker: gain 1 + A sin(2 pi hz s + phase) at each frame's second s."""
    return _gains(frames, 1.0 + p["strength"] * np.sin(2 * np.pi * p["hz"] * times * seconds + p["phase"]))


def _draw_drift(strength: float, rng: np.random.Generator, across: Across | None = None) -> Params:
    return {"strength": float(strength), "sign": 1 if rng.random() < 0.5 else -1}


def _drift(frames: Frames, p: Params, times: np.ndarray, seconds: float, rng: np.random.Generator) -> Frames:
    """The exposure drifting linearly: gain 1 + sign * strength * t."""
    return _gains(frames, 1.0 + p["sign"] * p["strength"] * times)


def _noise(frames: Frames, p: Params, times: np.ndarray, seconds: float, rng: np.random.Generator) -> Frames:
    """Sensor noise: independent Gaussian noise per pixel, channel and frame (sigma on 0..255)."""
    return frames + rng.standard_normal(frames.shape, dtype=np.float32) * np.float32(p["strength"])


def _draw_cast(strength: float, rng: np.random.Generator, across: Across | None = None) -> Params:
    return {"strength": float(strength), "cast": [float(v) for v in rng.uniform(-1, 1, 3)]}


def _colour_cast(frames: Frames, p: Params, times: np.ndarray, seconds: float, rng: np.random.Generator) -> Frames:
    return frames * (1.0 + p["strength"] * np.asarray(p["cast"], np.float32))


def _vignette(frames: Frames, p: Params, times: np.ndarray, seconds: float, rng: np.random.Generator) -> Frames:
    h, w = frames.shape[1:3]
    y, x = np.mgrid[0:h, 0:w]
    r2 = ((x - w / 2) / (w / 2)) ** 2 + ((y - h / 2) / (h / 2)) ** 2
    return frames * (1.0 - p["strength"] * r2 / 2).astype(np.float32)[None, :, :, None]


def _low_contrast(frames: Frames, p: Params, times: np.ndarray, seconds: float, rng: np.random.Generator) -> Frames:
    return 128 + (frames - 128) * np.float32(1.0 - p["strength"])


def _salt_pepper(frames: Frames, p: Params, times: np.ndarray, seconds: float, rng: np.random.Generator) -> Frames:
    out = frames.copy()
    mask = rng.random(frames.shape[:3]) < p["strength"]
    out[mask] = np.where(rng.random(int(mask.sum())) < 0.5, 0, 255)[:, None].astype(np.float32)
    return out


def _jpeg(frames: Frames, p: Params, times: np.ndarray, seconds: float, rng: np.random.Generator) -> Frames:
    out = []
    for f in to_u8(frames):
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=int(p["strength"]))
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float32))
    return np.stack(out)


def _frame_drop(frames: Frames, p: Params, times: np.ndarray, seconds: float, rng: np.random.Generator) -> Frames:
    """`strength` frames replaced by their predecessor (a stalled camera or a lost packet)."""
    out = frames.copy()
    drops = min(int(p["strength"]), len(frames) - 1)
    for k in sorted(rng.choice(np.arange(1, len(frames)), size=drops, replace=False)):
        out[k] = out[k - 1]
    return out


# ---- the backdrop: held-out footage behind a plain background ----------------------------------------

def _draw_backdrop(strength: float, rng: np.random.Generator, across: Across | None = None) -> Params:
    return footage.draw_held_out(strength, rng)


def _backdrop(frames: Frames, p: Params, times: np.ndarray, seconds: float, rng: np.random.Generator) -> Frames:
    return footage.behind(frames, p, times, seconds)


# ---- the table -------------------------------------------------------------------------------------

_N = Nuisance
NUISANCES: dict[str, Nuisance] = {n.name: n for n in (
    _N("noise", "per-pixel sensor noise", "sigma (0-255)", (4.0, 8.0, 16.0), "sensor", World(0.5, 2.0, 12.0),
       _plain, pixels=_noise),
    _N("flicker", "exposure flicker, gain 1 + A sin(2 pi f t), f 1-6 Hz", "A", (0.03, 0.06, 0.12), "exposure",
       World(0.35, 0.02, 0.1), _draw_flicker, pixels=_flicker),
    _N("gain_drift", "exposure drifting linearly over the clip", "total gain change", (0.1, 0.25, 0.4), "exposure",
       World(0.3, 0.05, 0.3), _draw_drift, pixels=_drift),
    _N("shake", "hand-held camera shake, three sinusoids per axis", "RMS offset per axis, fraction of width",
       (0.01, 0.02, 0.04), "camera", World(0.35, 0.0025, 0.016), _draw_shake, camera=_shake),
    _N("pan", "the camera travels steadily, any direction", "travel over the clip, fraction of width",
       (0.05, 0.1, 0.2), "camera", World(0.3, 0.03, 0.07), _draw_pan, camera=_pan),
    _N("zoom", "the camera zooms in or out about the centre", "scale factor over the clip", (1.06, 1.12, 1.25),
       "camera", World(0.25, 1.04, 1.14), _draw_zoom, camera=_zoom),
    _N("blur", "defocus (Gaussian)", f"radius, pixels at {BLUR_WIDTH} wide", (0.8, 1.5, 3.0), "optics",
       World(0.25, 0.5, 1.5), _plain, pixels=_blur),
    _N("occlusion", "a static grey bar in front of the scene", "bar width, fraction of the frame", (0.06, 0.12, 0.2),
       "scene", World(0.2, 0.05, 0.1), _draw_occlusion, scene=_bar),
    _N("colour_cast", "white balance off (per-channel gain)", "max channel gain change", (0.08, 0.15, 0.3),
       "exposure", None, _draw_cast, pixels=_colour_cast),
    _N("vignette", "darker corners", "corner darkening", (0.3, 0.5, 0.8), "optics", None, _plain, pixels=_vignette),
    _N("low_contrast", "haze / flat exposure", "contrast lost", (0.2, 0.4, 0.6), "exposure", None, _plain,
       pixels=_low_contrast),
    _N("salt_pepper", "dead and hot pixels", "fraction of pixels", (0.005, 0.01, 0.03), "sensor", None, _plain,
       pixels=_salt_pepper),
    _N("jpeg", "heavy compression", "JPEG quality", (40.0, 20.0, 10.0), "codec", None, _plain, pixels=_jpeg),
    _N("frame_drop", "frames repeated (stalls)", "sampled frames dropped", (1.0, 1.0, 2.0), "codec", None, _plain,
       pixels=_frame_drop),
    _N("real_scene", "held-out real footage behind the objects of a plain-background clip",
       "footage opacity over the plain background", (0.5, 1.0, 1.0), "backdrop", None, _draw_backdrop,
       pixels=_backdrop),
)}
LISTED: dict[str, Nuisance] = {k: n for k, n in NUISANCES.items() if not n.held_out}
HELD_OUT: dict[str, Nuisance] = {k: n for k, n in NUISANCES.items() if n.held_out}


def by_kind(names) -> list[str]:
    """`names` in the order light meets them (KINDS), the table's order within a kind."""
    return sorted(names, key=lambda n: (KINDS.index(NUISANCES[n].kind), list(NUISANCES).index(n)))


def apply_pixels(frames: Frames, present: dict[str, Params], times: np.ndarray, seconds: float,
                 rng: np.random.Generator) -> Frames:
    """The pixel nuisances among `present` (name -> draw) on float frames, in the order light meets them."""
    for name in by_kind(present):
        hook = NUISANCES[name].pixels
        if hook is not None:
            frames = hook(frames, present[name], np.asarray(times, np.float64), seconds, rng)
    return frames


def perturb(frames: Frames, name: str, strength: float, seed: int, seconds: float = 2.0) -> Frames:
    """`frames` -- the K sampled frames of a `seconds`-long clip, uint8 -- under nuisance `name` at
    `strength`, deterministic in `seed`: the draw and the implementation the world uses."""
    n = NUISANCES[name]
    rng = np.random.default_rng(seed)
    p = n.draw(strength, rng, None)
    times = sampled_times(len(frames))
    x = frames.astype(np.float32)
    if n.camera is not None:
        x = _move_frames(x, *n.camera(p, times))
    elif n.scene is not None:
        h, w = frames.shape[1:3]
        out = []
        for f in frames:
            img = Image.fromarray(f)
            n.scene(ImageDraw.Draw(img), p, w, h, 0)
            out.append(np.asarray(img, np.float32))
        x = np.stack(out)
    else:
        x = apply_pixels(x, {name: p}, times, seconds, rng)
    return to_u8(x)


def record(present: dict[str, Params]) -> dict[str, float]:
    """What the shard json says of a clip's nuisances: each present one's strength, in its unit."""
    return {name: round(float(present[name]["strength"]), 4) for name in NUISANCES if name in present}
