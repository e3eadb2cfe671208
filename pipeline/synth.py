"""The built-in dataset: procedurally rendered H.264 clips with visually grounded captions.

Every word a caption uses for an object, colour, size, action or background is recoverable from
the frames (motion from any two of 5 evenly spaced frames), so a captioner can learn it and the
attributes mined from the captions are real labels. Output is the official MSR-VTT layout
(``videos/video{N}.mp4`` + ``videodatainfo.json``) so the pipeline's MSR-VTT adapter reads it as is.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from vidcap.atomic import write_json_atomic
from vidcap.errors import UserError
from vidcap.grammar import (
    ACTIONS,
    BACKGROUND_PHRASE,
    BACKGROUND_WORDS,
    BACKGROUNDS,
    COLOUR_NAMES,
    DETERMINERS,
    SHAPE_WORDS,
    SHAPES,
    SIZE_CHANGING,
    SIZE_WORDS,
    TAILS,
    TEMPLATES,
    action_phrases,
)
from vidcap.pipeline.ffmpeg_check import require_ffmpeg

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (40, 70, 235),
    "yellow": (240, 220, 20),
    "purple": (150, 40, 210),
    "orange": (250, 130, 0),
}
assert tuple(COLOURS) == COLOUR_NAMES
# Grey backgrounds keep colour words unambiguous: only objects are saturated.
BACKGROUND_LEVELS: dict[str, tuple[int, int]] = {"black": (0, 40), "gray": (90, 160), "white": (215, 255)}
assert tuple(BACKGROUND_LEVELS) == BACKGROUNDS
SPLIT_FRACTIONS = (("train", 0.7), ("validate", 0.1), ("test", 0.2))


@dataclass
class ObjectSpec:
    shape: str
    colour: str
    size: str  # "small" | "large"
    action: str  # one of ACTIONS, or "still" for a second, static object
    x0: float  # start centre, fraction of width
    y0: float
    angle0: float


@dataclass
class ClipSpec:
    index: int
    split: str
    background: str
    bg_low: int
    bg_high: int
    gradient_vertical: bool
    objects: list[ObjectSpec] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)


def _radius(size: str, width: int, height: int) -> float:
    base = min(width, height)
    return base * (0.09 if size == "small" else 0.2)


def object_state(obj: ObjectSpec, t: float, width: int, height: int) -> tuple[float, float, float, float]:
    """Centre x, y (pixels), radius and angle (degrees) of an object at time t in [0, 1]."""
    r = _radius(obj.size, width, height)
    x, y, angle = obj.x0 * width, obj.y0 * height, obj.angle0
    travel_x, travel_y = 0.55 * width, 0.5 * height
    if obj.action == "left":
        x -= travel_x * t
    elif obj.action == "right":
        x += travel_x * t
    elif obj.action == "up":
        y -= travel_y * t
    elif obj.action == "down":
        y += travel_y * t
    elif obj.action == "grow":
        r *= 0.5 + 1.3 * t
    elif obj.action == "shrink":
        r *= 1.8 - 1.3 * t
    elif obj.action == "spin":
        angle += 150.0 * t  # non-symmetric step between any two of 5 sampled frames
    elif obj.action == "bounce":
        y -= 0.3 * height * abs(math.sin(3.0 * math.pi * t))
    return x, y, r, angle


def _polygon(shape: str, x: float, y: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.radians(angle + 45 + 90 * k), r) for k in range(4)]
    elif shape == "triangle":
        pts = [(math.radians(angle - 90 + 120 * k), r) for k in range(3)]
    else:  # star
        pts = [(math.radians(angle - 90 + 36 * k), r if k % 2 == 0 else r * 0.45) for k in range(10)]
    return [(x + rad * math.cos(a), y + rad * math.sin(a)) for a, rad in pts]


def render_frame(spec: ClipSpec, t: float, width: int, height: int) -> np.ndarray:
    ramp = np.linspace(spec.bg_low, spec.bg_high, height if spec.gradient_vertical else width)
    plane = np.broadcast_to(ramp[:, None] if spec.gradient_vertical else ramp[None, :], (height, width))
    img = Image.fromarray(np.repeat(plane[..., None], 3, axis=2).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for obj in spec.objects:
        x, y, r, angle = object_state(obj, t, width, height)
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        else:
            draw.polygon(_polygon(obj.shape, x, y, r, angle), fill=fill)
    return np.asarray(img)


def _place(action: str, rng: np.random.Generator, slot: float) -> tuple[float, float]:
    """Start position so the whole motion stays on screen; `slot` spreads two objects apart."""
    x = {"left": 0.78, "right": 0.22}.get(action, slot)
    y = {"up": 0.75, "down": 0.25, "bounce": 0.72}.get(action, 0.5)
    return x + rng.uniform(-0.03, 0.03), y + rng.uniform(-0.03, 0.03)


def make_captions(spec: ClipSpec, rng: np.random.Generator) -> list[str]:
    """10-20 distinct captions of the clip, drawn from the phrase table of ``vidcap.grammar``."""
    main = spec.objects[0]
    other = spec.objects[1] if len(spec.objects) > 1 else None
    n_target = int(rng.integers(10, 21))

    def pick(options):
        return options[int(rng.integers(len(options)))]

    def noun_phrase(obj: ObjectSpec, det: str, with_colour: bool, with_size: bool) -> str:
        words = [det]
        if with_size and obj.action not in SIZE_CHANGING:  # a changing size is never named
            words.append(pick(SIZE_WORDS[obj.size]))
        if with_colour:
            words.append(obj.colour)
        words.append(pick(SHAPE_WORDS[obj.shape]))
        return " ".join(words)

    captions: list[str] = []
    attempts = 0
    while len(captions) < n_target and attempts < 400:
        attempts += 1
        det = pick(DETERMINERS)
        colour = bool(rng.random() < 0.8)
        np_main = noun_phrase(main, det, colour, bool(rng.random() < 0.5))
        present, ing = pick(action_phrases(main.action, main.shape))
        bg = BACKGROUND_PHRASE.format(bg=pick(BACKGROUND_WORDS[spec.background])) if rng.random() < 0.3 else ""
        tail = ""
        if other is not None and rng.random() < 0.7:
            np_other = noun_phrase(other, "a", bool(rng.random() < 0.85), bool(rng.random() < 0.4))
            tail = pick(TAILS).format(other=np_other)
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        fill = {"np": np_main, "present": present, "ing": ing, "tail": tail, "bg": bg}
        if "{np_a}" in template:
            fill["np_a"] = noun_phrase(main, "a", colour, True)
        if "{np_a_plain}" in template:
            fill["np_a_plain"] = noun_phrase(main, "a", colour, False)
        text = re.sub(r"\ba (?=[aeiou])", "an ", " ".join(template.format(**fill).split()))
        if text not in captions:
            captions.append(text)
    return captions


def make_specs(n_clips: int, seed: int) -> list[ClipSpec]:
    """All clip specifications and captions, decided up front from one seed."""
    bounds, acc = [], 0.0
    for name, frac in SPLIT_FRACTIONS:
        acc += frac
        bounds.append((name, round(acc * n_clips)))
    specs = []
    for i in range(n_clips):
        rng = np.random.default_rng([seed, i])
        split = next(name for name, end in bounds if i < end)
        bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        lo, hi = BACKGROUND_LEVELS[bg]
        a, b = sorted(int(v) for v in rng.integers(lo, hi + 1, size=2))
        spec = ClipSpec(i, split, bg, a, b, bool(rng.random() < 0.5))
        n_obj = 2 if rng.random() < 0.3 else 1
        colours = rng.permutation(list(COLOURS))[:n_obj]
        shapes = rng.permutation(list(SHAPES))[:n_obj]
        action = ACTIONS[int(rng.integers(len(ACTIONS)))]
        if action == "spin" and shapes[0] == "circle":  # a spinning circle is invisible
            shapes[0] = SHAPES[1 + int(rng.integers(3))]
            if n_obj == 2 and shapes[1] == shapes[0]:
                shapes[1] = "circle"
        slots = [0.5] if n_obj == 1 else [0.3, 0.72]
        if n_obj == 2 and action in ("left", "right", "grow", "shrink"):
            slots = [0.5, 0.5]  # movers sweep across; the static one sits apart vertically
        for k in range(n_obj):
            act = action if k == 0 else "still"
            size = "large" if rng.random() < 0.5 else "small"
            if k == 1:
                size = "small"
            x, y = _place(act, rng, slots[k])
            if k == 1 and action in ("left", "right", "grow", "shrink"):
                y = 0.15 if rng.random() < 0.5 else 0.85
            elif k == 1 and action in ("up", "down", "bounce"):
                x = 0.18 if rng.random() < 0.5 else 0.82
            spec.objects.append(ObjectSpec(str(shapes[k]), str(colours[k]), size, act, x, y,
                                           float(rng.uniform(0, 30))))
        spec.captions = make_captions(spec, rng)
        specs.append(spec)
    return specs


def encode_clip(spec: ClipSpec, path: Path, width: int, height: int, fps: int, seconds: float) -> None:
    """Render every frame and encode with x264 (single-threaded, bit-exact: deterministic bytes)."""
    n_frames = max(2, round(fps * seconds))
    frames = np.stack([render_frame(spec, k / (n_frames - 1), width, height) for k in range(n_frames)])
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", r=fps)
        .output(str(tmp), vcodec="libx264", pix_fmt="yuv420p", preset="veryfast", crf=18,
                threads=1, g=fps, **{"fflags": "+bitexact", "flags:v": "+bitexact", "map_metadata": -1})
        .overwrite_output()
        .run(input=frames.tobytes(), quiet=True)
    )
    tmp.replace(path)


def _encode_job(args: tuple) -> int:
    spec, path, width, height, fps, seconds = args
    encode_clip(spec, path, width, height, fps, seconds)
    return spec.index


def videodatainfo(specs: list[ClipSpec], fps: int, seconds: float, seed: int) -> dict:
    videos, sentences = [], []
    for s in specs:
        videos.append({
            "category": ACTIONS.index(s.objects[0].action), "url": f"synth://vidcap/seed{seed}/{s.index}",
            "video_id": f"video{s.index}", "start time": 0.0, "end time": float(seconds),
            "split": s.split, "id": s.index,
            # Ground truth for the grounded evaluation (evalkit.grounding); objects[0] is the one that acts.
            "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size, "action": o.action} for o in s.objects],
        })
        for c in s.captions:
            sentences.append({"caption": c, "video_id": f"video{s.index}", "sen_id": len(sentences)})
    return {
        "info": {"contributor": "vidcap synth", "data_created": "deterministic", "version": "1.0",
                 "year": 2026, "description": f"vidcap built-in dataset, seed {seed}, {fps} fps"},
        "videos": videos,
        "sentences": sentences,
        "vidcap_spec": [asdict(s) for s in specs],  # ground truth, for tests and curious users
    }


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 160x120") from None
    if w < 64 or h < 48 or w % 2 or h % 2 or w > 1920 or h > 1080:
        raise UserError(f"--size {text!r}: width and height must be even, at least 64x48 and at most 1920x1080")
    return w, h


def synthesize(out: Path, clips: int = 600, seed: int = 0, size: tuple[int, int] = (160, 120),
               seconds: float = 2.0, fps: int = 24, workers: int = 2, overwrite: bool = False,
               progress: bool = True) -> Path:
    """Write the built-in dataset to `out` and return the path of its videodatainfo.json."""
    if clips < 1 or clips > 100_000:
        raise UserError(f"--clips {clips}: must be between 1 and 100000")
    if not 0.5 <= seconds <= 30:
        raise UserError(f"--seconds {seconds}: must be between 0.5 and 30")
    for name, value, lo, hi in (("--fps", fps, 1, 120), ("--seed", seed, 0, 2**32 - 1), ("--workers", workers, 1, 64)):
        if not lo <= value <= hi:
            raise UserError(f"{name} {value}: must be between {lo} and {hi}")
    require_ffmpeg()
    out = Path(os.path.abspath(out))  # a folder named like an option (-x) must never reach ffmpeg as one
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out}: directory is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    width, height = size
    specs = make_specs(clips, seed)
    jobs = [(s, out / "videos" / f"video{s.index}.mp4", width, height, fps, seconds) for s in specs]
    bar = tqdm(total=len(jobs), desc="synth clips", unit="clip", disable=not progress)
    if workers <= 1:
        for job in jobs:
            _encode_job(job)
            bar.update()
    else:
        with get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_encode_job, jobs, chunksize=4):
                bar.update()
    bar.close()
    info_path = out / "videodatainfo.json"
    write_json_atomic(info_path, videodatainfo(specs, fps, seconds, seed))
    return info_path

