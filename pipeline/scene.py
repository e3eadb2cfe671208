"""The realistic world's renderer (``pipeline synth --world real``): the clean world's objects in a
scene filmed by an imperfect camera.

A clip is rendered in *scene* coordinates -- the background, the objects and any occluder live on a
canvas larger than the frame -- and each video frame is what a camera sees of it: moved along the
camera nuisances' path (shake, pan, zoom), then the pixel nuisances (blur, the exposure's flicker
and drift, sensor noise). Every nuisance -- its strength, its draw and its implementation -- is an
entry of ``pipeline.nuisances``, which ``train robustness`` applies too; this module is the scene
they act on. Objects move in scene coordinates, so the words that name their motion are relative to
the scene, as people write them; the camera's own motion is at most a fifth of an object's travel,
so the word also agrees with the motion in the image (tested against the generator's truth).

Backgrounds: the clean world's grey gradients, real photographs from scikit-image's data folder
(``skimage.data``: public-domain and CC0 images, listed in ``PHOTOS`` with their licences), or
clutter -- static muted shapes over a textured gradient. Real photographs bring saturated colours
that are not the object's, so a colour word must be bound to what moves.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vidcap.pipeline import nuisances

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


def render_real_frame(t: float, width: int, height: int, canvas: Image.Image, camera: tuple[float, float, float],
                      draw_scene: Callable[[ImageDraw.ImageDraw, float, int], None]) -> np.ndarray:
    """One frame (uint8 H x W x 3, before the pixel nuisances) at time t in [0, 1]: the scene at t --
    `draw_scene` puts the objects and anything in front of them on a copy of the canvas -- seen by the
    camera, moved by (dx, dy) pixels and zoomed by a scale (``nuisances.camera_path``, in pixels)."""
    m = int(round(MARGIN * max(width, height)))
    scene = canvas.copy()
    draw_scene(ImageDraw.Draw(scene), t, m)
    dx, dy, z = camera
    return nuisances.camera_view(scene, m, width, height, dx, dy, z)
