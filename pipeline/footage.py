"""Real moving scenes behind the built-in world's objects: crops of real video clips.

``pipeline synth --world real`` puts a share of its clips (``synth.REAL_BACKGROUNDS``' ``footage``) in
front of real footage instead of a photograph, clutter or a gradient: people and vehicles that move
by themselves, saturated colours that are not the object's, a camera that moves on its own. A few
source videos give many scenes: each clip draws its own source, time offset, playback speed, crop
(position and size), horizontal flip and colour shift (a hue rotation about the grey axis and a
saturation gain) from the seed (``draw``), recorded in ``videodatainfo.json`` and the shard json
(``record``: the ``footage`` field).

Sources: the real clips of the project's shared folder, ``../shared/data/videos/`` beside the
repository (``DEFAULT_FOLDER``; ``pipeline synth --footage DIR`` points elsewhere), and only the ones
named here -- other found footage stays out of the world, because the checks use footage from
elsewhere. ``WORLD_SOURCES`` may enter the training world; ``HELD_OUT_SOURCES`` never do: they are
`train robustness`'s ``real_scene`` condition (``pipeline.nuisances``), the footage a model was
never shown. Held out: ``carphone_pristine.mp4`` (a man talking in a car, the scenery moving past
the window -- a *person* behind the subject, the case the issue measured worst) and ``gradio_b.mp4``
(a rendered night-side globe, city lights on black: a scene unlike any the world renders). The world
keeps the two richest: ``bikes.mp4`` (a city street, cyclists, taxis and walkers, a panning camera)
and ``bigbuckbunny.mp4`` (saturated greens and sky, a moving character).

Without the folder (a user's clone has no ``../shared``) the world falls back to photographs for
those clips and ``pipeline synth`` says so in one line; every other draw of a clip is the same
(the footage's draw has a random stream of its own).

Each source is decoded once per process (ffmpeg, scaled down to ``CACHE_HEIGHT`` rows first: the
world's frames are at most 224x168, so ~120 MB for both world sources) and kept for the process's
later clips.
"""

from __future__ import annotations

import hashlib
import math
from functools import cache
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image

# ../shared/data/videos beside the repository (this file is REPO/pipeline/footage.py)
DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
WORLD_SOURCES = ("bigbuckbunny.mp4", "bikes.mp4")
HELD_OUT_SOURCES = ("carphone_pristine.mp4", "gradio_b.mp4")
CACHE_HEIGHT = 216  # rows a source is decoded at (smaller ones keep theirs)
SPEEDS = (0.5, 2.0)  # playback speed, drawn log-uniformly (then slowed where the source is too short)
CROP_SIDE = (0.55, 1.0)  # the crop's height (or width, whichever binds first) as a fraction of the source's
HUE_TURNS = 0.5  # hue rotation drawn in [-HUE_TURNS, HUE_TURNS] of a full turn
SATURATION = (0.8, 1.6)  # saturation gain: the footage's colours, from muted to more saturated


@cache
def _probe(path: str) -> tuple[int, int, float, float] | None:
    """(width, height, fps, seconds) of a source, or None where it is absent or not a video."""
    try:
        stream = next(s for s in ffmpeg.probe(path)["streams"] if s.get("codec_type") == "video")
        num, den = (int(v) for v in stream["r_frame_rate"].split("/"))
        fps = num / den
        n = int(stream.get("nb_frames") or 0) or round(float(stream["duration"]) * fps)
        return int(stream["width"]), int(stream["height"]), fps, n / fps
    except (ffmpeg.Error, StopIteration, KeyError, ValueError, ZeroDivisionError, OSError):
        return None


def sources(folder: Path | str | None, held_out: bool = False) -> dict[str, tuple[int, int, float, float]]:
    """The usable sources in `folder` (default DEFAULT_FOLDER): the world's, or with `held_out` the
    held-out ones -- never a mix, and never a file this module does not name."""
    folder = Path(folder or DEFAULT_FOLDER)
    names = HELD_OUT_SOURCES if held_out else WORLD_SOURCES
    found = {n: _probe(str(folder / n)) for n in names if (folder / n).is_file()}
    return {n: meta for n, meta in found.items() if meta is not None}


def fingerprint(folder: Path | str | None, names) -> dict[str, str]:
    """sha256 of each named source (what videodatainfo records: the same name with other bytes is another world)."""
    folder = Path(folder or DEFAULT_FOLDER)
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in sorted(names)}


def draw(rng: np.random.Generator, available: dict[str, tuple[int, int, float, float]], seconds: float,
         aspect: float) -> dict:
    """One clip's scene: source, offset (s), speed, crop (fractions x0, y0, x1, y1 of the source, at
    `aspect` = width / height of the scene canvas), flip, hue (turns), saturation."""
    names = sorted(available)
    name = names[int(rng.integers(len(names)))]
    w, h, _fps, duration = available[name]
    speed = math.exp(rng.uniform(math.log(SPEEDS[0]), math.log(SPEEDS[1])))
    speed = min(speed, 0.98 * duration / seconds)  # the clip's span of source time fits the source
    offset = rng.uniform(0.0, max(0.0, duration - seconds * speed))
    side = rng.uniform(*CROP_SIDE)
    ch = side * h
    cw = ch * aspect
    if cw > side * w:  # a source narrower than the canvas's aspect: the width binds
        cw = side * w
        ch = cw / aspect
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    return {"source": name, "offset": round(float(offset), 3), "speed": round(float(speed), 3),
            "crop": [round(float(v), 4) for v in (x0 / w, y0 / h, (x0 + cw) / w, (y0 + ch) / h)],
            "flip": bool(rng.random() < 0.5), "hue": round(float(rng.uniform(-HUE_TURNS, HUE_TURNS)), 3),
            "saturation": round(float(rng.uniform(*SATURATION)), 3)}


@cache
def _frames(path: str) -> tuple[np.ndarray, float]:
    """Every frame of a source (N, H, W, 3) uint8 at CACHE_HEIGHT rows at most, and its frame rate:
    decoded once per process."""
    meta = _probe(path)
    if meta is None:
        raise FileNotFoundError(f"{path}: footage not found or not a video")
    w, h, fps, _ = meta
    oh = min(h, CACHE_HEIGHT)
    ow = max(2, int(round(w * oh / h / 2)) * 2)
    out, _ = (ffmpeg.input(path).filter("scale", ow, oh, flags="area")
              .output("pipe:", format="rawvideo", pix_fmt="rgb24", threads=1)
              .run(capture_stdout=True, quiet=True))
    frames = np.frombuffer(out, np.uint8).reshape(-1, oh, ow, 3)
    frames.setflags(write=False)
    return frames, fps


def colour_matrix(hue: float, saturation: float) -> np.ndarray:
    """3x3: a rotation by `hue` turns about the grey axis, then the chroma scaled by `saturation`
    (greys stay grey: a colour shift, not a brightness change)."""
    theta = 2 * math.pi * hue
    k = np.full(3, 1 / math.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    grey = np.outer(k, k)
    rot = math.cos(theta) * np.eye(3) + math.sin(theta) * cross + (1 - math.cos(theta)) * grey
    return (grey + saturation * (rot - grey)).astype(np.float32)


def frame_at(scene: dict, t: float, seconds: float, cw: int, ch: int, folder: Path | str | None) -> Image.Image:
    """The scene at time `t` in [0, 1] of a `seconds`-long clip, as a cw x ch picture: the source's
    frame at offset + t * seconds * speed, cropped, resized, flipped and colour-shifted."""
    frames, fps = _frames(str(Path(folder or DEFAULT_FOLDER) / scene["source"]))
    n, h, w, _ = frames.shape
    idx = min(n - 1, max(0, int(round((scene["offset"] + t * seconds * scene["speed"]) * fps))))
    x0, y0, x1, y1 = scene["crop"]
    img = Image.fromarray(frames[idx]).resize((cw, ch), Image.Resampling.BILINEAR, box=(x0 * w, y0 * h, x1 * w, y1 * h))
    if scene["flip"]:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x = np.asarray(img, np.float32) @ colour_matrix(scene["hue"], scene["saturation"]).T
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def record(scene: dict) -> dict:
    """What videodatainfo.json and the shard json say of a clip's scene (the ``footage`` field)."""
    return {k: scene[k] for k in ("source", "offset", "speed", "crop", "flip", "hue", "saturation")}


# ---- train robustness's real_scene: held-out footage behind a plain background --------------------

KEY_CHROMA = (25.0, 60.0)  # a pixel's chroma (max - min channel, 3x3 mean) from background (<=) to object (>=)


def object_alpha(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 1) in [0, 1]: how much each pixel is an object, keyed on chroma. The clean world's rule
    (``synth.BACKGROUND_LEVELS``): backgrounds are grey, only objects are saturated -- so on its clips,
    and on the realistic world's plain gradients, this is the objects (edges soft after the codecs).
    The 3x3 mean keeps sensor noise and JPEG ringing on a grey wall below the key."""
    from scipy.ndimage import uniform_filter

    smooth = uniform_filter(np.asarray(frames, np.float32), size=(1, 3, 3, 1), mode="nearest")
    chroma = smooth.max(-1, keepdims=True) - smooth.min(-1, keepdims=True)
    lo, hi = KEY_CHROMA
    return np.clip((chroma - lo) / (hi - lo), 0.0, 1.0)


def draw_held_out(strength: float, rng: np.random.Generator) -> dict:
    """One clip's held-out scene, in fractions (the frame's aspect and the clip's length are known
    only when it is applied): a held-out source, where in it the clip starts (0..1 of the time left),
    speed, crop size and position, flip. No colour shift: the footage as it was filmed."""
    return {"strength": float(strength), "source": HELD_OUT_SOURCES[int(rng.integers(len(HELD_OUT_SOURCES)))],
            "start": float(rng.uniform()), "speed": float(math.exp(rng.uniform(math.log(SPEEDS[0]), math.log(SPEEDS[1])))),
            "side": float(rng.uniform(*CROP_SIDE)), "x": float(rng.uniform()), "y": float(rng.uniform()),
            "flip": bool(rng.random() < 0.5)}


def behind(frames: np.ndarray, p: dict, times: np.ndarray, seconds: float,
           folder: Path | str | None = None) -> np.ndarray:
    """`frames` (float T x H x W x 3, a clip with a plain background) with held-out footage `p`
    (draw_held_out) behind its objects at opacity p["strength"]: the source's frames at the clip's
    `times`, cropped at the frame's aspect, and composited where ``object_alpha`` says background."""
    available = sources(folder, held_out=True)
    if p["source"] not in available:
        raise FileNotFoundError(f"{Path(folder or DEFAULT_FOLDER) / p['source']}: held-out footage not found")
    _t, h, w, _ = frames.shape
    sw, sh, _fps, duration = available[p["source"]]
    speed = min(p["speed"], 0.98 * duration / seconds)
    ch = p["side"] * sh
    cw = ch * w / h
    if cw > p["side"] * sw:
        cw = p["side"] * sw
        ch = cw * h / w
    x0, y0 = p["x"] * (sw - cw), p["y"] * (sh - ch)
    scene = {"source": p["source"], "offset": p["start"] * max(0.0, duration - seconds * speed), "speed": speed,
             "crop": [x0 / sw, y0 / sh, (x0 + cw) / sw, (y0 + ch) / sh], "flip": p["flip"], "hue": 0.0,
             "saturation": 1.0}
    back = np.stack([np.asarray(frame_at(scene, float(u), seconds, w, h, folder), np.float32) for u in times])
    keep = object_alpha(frames)
    s = np.float32(p["strength"])
    return frames * keep + (1 - keep) * ((1 - s) * frames + s * back)
