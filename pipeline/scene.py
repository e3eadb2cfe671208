"""The realistic world's renderer (``pipeline synth --world real``): the clean world's objects in a
scene filmed by an imperfect camera.

A clip is rendered in *scene* coordinates -- the background, the objects and any occluder live on a
canvas larger than the frame -- and each video frame is what a camera sees of it: moved by its pan
and shake, zoomed about the centre, exposed over a shutter (motion blur: several sub-frame renders
averaged), with its exposure flickering or drifting and sensor noise on top. Objects move in scene
coordinates, so the words that name their motion are relative to the scene, as people write them;
the camera's own motion is at most a fifth of an object's travel, so the word also agrees with the
motion in the image (tested against the generator's truth).

Backgrounds: the clean world's grey gradients, real photographs from scikit-image's data folder
(``skimage.data``: public-domain and CC0 images, listed in ``PHOTOS`` with their licences), or
clutter -- static muted shapes over a textured gradient. Real photographs bring saturated colours
that are not the object's, so a colour word must be bound to what moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Photographs shipped in scikit-image's wheel (skimage/data/*.png|jpg), with the licence its
# documentation states for each.
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("astronaut.png", "public domain (NASA)"),
    "camera": ("camera.png", "CC0 (Lav Varshney)"),
    "chelsea": ("chelsea.png", "CC0 (Stefan van der Walt)"),
    "coffee": ("coffee.png", "CC0 (Rachel Michetti)"),
    "coins": ("coins.png", "public domain (Walters Art Museum)"),
    "rocket": ("rocket.jpg", "public domain (SpaceX)"),
    "hubble_deep_field": ("hubble_deep_field.jpg", "public domain (NASA)"),
    "text": ("text.png", "public domain"),
    "brick": ("brick.png", "CC0 (CC0Textures)"),
    "grass": ("grass.png", "CC0 (CC0Textures)"),
    "gravel": ("gravel.png", "CC0 (CC0Textures)"),
}
MARGIN = 0.3  # the scene canvas extends this fraction of the frame's longer side beyond each edge
SUBFRAMES = 4  # sub-frame renders averaged over the shutter when a clip has motion blur


@cache
def _photo(name: str) -> Image.Image:
    try:
        import skimage
    except ImportError:  # pragma: no cover - scikit-image is a dependency
        raise RuntimeError("the realistic world's photo backgrounds need scikit-image (pip install scikit-image)") from None
    path = Path(skimage.__file__).parent / "data" / PHOTOS[name][0]
    with Image.open(path) as img:
        return img.convert("RGB")


def photo_available() -> bool:
    try:
        _photo("camera")
    except (RuntimeError, OSError):
        return False
    return True


@dataclass
class Camera:
    """The camera's path over the clip: offsets in pixels, scale about the frame centre."""

    pan: tuple[float, float]  # total displacement over the clip, fractions of the frame's width
    shake: float  # amplitude of hand-held jitter, fraction of the frame's width
    shake_phases: tuple[float, ...]  # 2 axes x 3 frequencies
    zoom: float  # scale at the clip's end (1: none), reached geometrically

    def at(self, t: float, width: int) -> tuple[float, float, float]:
        dx, dy = self.pan[0] * t * width, self.pan[1] * t * width
        if self.shake:
            for axis in range(2):
                jitter = sum(math.sin(2 * math.pi * f * t + self.shake_phases[3 * axis + j]) / (j + 1)
                             for j, f in enumerate((1.7, 3.9, 7.3)))
                jitter *= self.shake * width / 1.3
                dx, dy = (dx + jitter, dy) if axis == 0 else (dx, dy + jitter)
        return dx, dy, self.zoom ** t


def background_canvas(bg: dict, cw: int, ch: int, levels: tuple[int, int], vertical: bool) -> Image.Image:
    """The static scene behind the objects, cw x ch pixels."""
    lo, hi = levels
    ramp = np.linspace(lo, hi, ch if vertical else cw)
    plane = np.broadcast_to(ramp[:, None] if vertical else ramp[None, :], (ch, cw))
    base = np.repeat(plane[..., None], 3, axis=2).astype(np.float32)
    kind = bg["kind"]
    if kind == "photo":
        img = _photo(bg["image"])
        w, h = img.size
        x0, y0, x1, y1 = (int(round(v * s)) for v, s in zip(bg["crop"], (w, h, w, h), strict=True))
        img = img.crop((x0, y0, x1, y1)).resize((cw, ch), Image.Resampling.BILINEAR)
        if bg.get("flip"):
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img
    if kind == "clutter":
        rng = np.random.default_rng(bg["seed"])
        texture = rng.normal(0, bg.get("texture", 14.0), (ch // 4 + 1, cw // 4 + 1))
        tex = np.asarray(Image.fromarray(texture.astype(np.float32)).resize((cw, ch), Image.Resampling.BICUBIC))
        img = Image.fromarray(np.clip(base + tex[..., None], 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(bg["items"])):
            # muted colours (low saturation): clutter is stuff, not a competitor for the colour words
            grey = rng.uniform(30, 225)
            tint = rng.uniform(-1, 1, 3) * rng.uniform(0, 0.3) * grey
            fill = tuple(int(np.clip(grey + v, 0, 255)) for v in tint)
            x, y = rng.uniform(0, cw), rng.uniform(0, ch)
            s = rng.uniform(0.03, 0.16) * min(cw, ch)
            shape = int(rng.integers(3))
            if shape == 0:
                draw.rectangle([x - s, y - s * rng.uniform(0.3, 1.5), x + s, y + s], fill=fill)
            elif shape == 1:
                draw.ellipse([x - s, y - s * rng.uniform(0.4, 1.2), x + s, y + s], fill=fill)
            else:
                draw.line([x, y, x + rng.uniform(-3, 3) * s, y + rng.uniform(-3, 3) * s], fill=fill,
                          width=max(1, int(s / 4)))
        return img.filter(ImageFilter.GaussianBlur(0.6))
    return Image.fromarray(base.astype(np.uint8))


def render_real_frame(spec, t: float, width: int, height: int, canvas: Image.Image, cam: Camera,
                      draw_objects, exposure: float, dt: float) -> np.ndarray:
    """One frame (float32 H x W x 3, before exposure and noise) at time t in [0, 1]: the scene at
    t (or averaged over the shutter [t - exposure*dt/2, t + exposure*dt/2]) through the camera."""
    m = int(round(MARGIN * max(width, height)))
    times = [t] if exposure <= 0 else [min(1.0, max(0.0, t + exposure * dt * (s / (SUBFRAMES - 1) - 0.5)))
                                       for s in range(SUBFRAMES)]
    acc = np.zeros((height, width, 3), np.float32)
    for u in times:
        scene = canvas.copy()
        draw_objects(ImageDraw.Draw(scene), u, m)
        dx, dy, z = cam.at(u, width)
        if dx == 0 and dy == 0 and z == 1:  # a camera at rest: the frame is the canvas's centre
            acc += np.asarray(scene.crop((m, m, m + width, m + height)), np.float32)
            continue
        a = 1.0 / z
        data = (a, 0.0, width / 2 + m + dx - a * width / 2, 0.0, a, height / 2 + m + dy - a * height / 2)
        acc += np.asarray(scene.transform((width, height), Image.Transform.AFFINE, data,
                                          resample=Image.Resampling.BILINEAR), np.float32)
    return acc / len(times)
