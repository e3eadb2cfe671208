"""Where a caption's words come from: occlusion maps over a clip's five frames (``train eval --evidence N``).

Why. The captioner's remaining errors on the built-in world are binding errors -- the right word for
the wrong object, or a colour of the scene behind (docs/real-world.md) -- and a number cannot say
which part of the picture the word was read from. An occlusion map can, for any frame-features entry
(the hand-made cues, the learned attention, the paper's pooled CNN) without looking inside it: one
cell of one frame at a time is replaced by what that frame would show without its moving content --
the clip's per-pixel temporal median -- and the log-probability of the word the model said there is
taken again, teacher-forced on the model's own caption. The drop is that cell's evidence for the
word: positive where the word was read. Grey fill would not do: a grey patch is itself a change, and
the motion cues would point at it.

A map per wrong slot word (the colour, shape or action the caption got wrong), per frame, on a
``grid`` x ``grid`` lattice: K * grid^2 forward passes a clip (125 at K=5, grid 5), batched.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw

from vidcap.evalkit.grounding import slot_positions
from vidcap.model.base import VideoCaptioner
from vidcap.text import tokenize

GRID = 5
BATCH = 25  # occluded clips per forward pass


@torch.no_grad()
def occlusion_maps(model: VideoCaptioner, frames: torch.Tensor, seq: list[int], positions: dict[str, int],
                   grid: int = GRID) -> dict[str, np.ndarray]:
    """frames (K, 3, H, W) uint8, the model's caption as token ids (its <eos> included), the token index
    of each slot word to explain -> per slot, (K, grid, grid): the drop in that word's log-probability
    when each cell of each frame is replaced by the clip's temporal median there."""
    if not positions:
        return {}
    model.eval()
    k, _, h, w = frames.shape
    target = torch.tensor(seq, dtype=torch.long)[None]
    fill = frames.float().median(0).values.to(frames.dtype)  # (3, H, W): the frame without what moves
    ys, xs = np.linspace(0, h, grid + 1).astype(int), np.linspace(0, w, grid + 1).astype(int)
    variants = [frames]
    for f in range(k):
        for i in range(grid):
            for j in range(grid):
                v = frames.clone()
                v[f, :, ys[i] : ys[i + 1], xs[j] : xs[j + 1]] = fill[:, ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
                variants.append(v)
    idx = torch.tensor(list(positions.values()), dtype=torch.long)
    scores = []
    for start in range(0, len(variants), BATCH):
        clips = torch.stack(variants[start : start + BATCH])
        logp = model(model.frame_features(clips), target.expand(len(clips), -1))  # (n, T, V)
        scores.append(logp[:, idx, target[0, idx]])  # (n, slots)
    s = torch.cat(scores)
    drop = (s[:1] - s[1:]).view(k, grid, grid, len(positions))
    return {slot: drop[..., n].numpy() for n, slot in enumerate(positions)}


def word_positions(caption: str, seq: list[int], itos: list[str], slots: list[str]) -> dict[str, int]:
    """The token index in `seq` of each of `slots`' words in the decoded `caption` (the model's own
    words, one token each); a slot whose word cannot be placed is left out."""
    toks, pos = tokenize(caption), slot_positions(caption)
    out = {}
    for slot in slots:
        i = pos.get(slot)
        if i is not None and i < len(seq) and itos[seq[i]] == toks[i]:
            out[slot] = i
    return out


def overlay(frame: np.ndarray, cells: np.ndarray, scale: float) -> Image.Image:
    """A frame (H, W, 3) uint8 with a cell map drawn over it: red where the word's evidence is (the drop,
    over `scale`, the clip's largest), blue where the cell argued against it."""
    h, w = frame.shape[:2]
    heat = np.asarray(Image.fromarray(np.clip(cells / max(scale, 1e-6), -1, 1).astype(np.float32))
                      .resize((w, h), Image.NEAREST))
    out = frame.astype(np.float32)
    red, blue = np.clip(heat, 0, 1)[..., None], np.clip(-heat, 0, 1)[..., None]
    out = out * (1 - 0.6 * red - 0.6 * blue) + 0.6 * red * np.array([255, 0, 0]) + 0.6 * blue * np.array([0, 80, 255])
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def evidence_strip(frames: torch.Tensor, maps: dict[str, np.ndarray], labels: dict[str, str],
                   thumb: int = 96) -> Image.Image:
    """One row per slot: the K frames with that slot word's map over them, and the word."""
    k = frames.shape[0]
    pics = frames.permute(0, 2, 3, 1).numpy()
    text_w = 150
    sheet = Image.new("RGB", (text_w + k * thumb, thumb * len(maps)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (slot, m) in enumerate(maps.items()):
        scale = float(np.abs(m).max())
        lines = [slot, *labels.get(slot, "").split(", ")]
        for n, line in enumerate(lines):
            draw.text((4, r * thumb + 4 + 14 * n), line[:24], fill="black")
        draw.text((4, r * thumb + 4 + 14 * len(lines)), f"max drop {scale:.2f}", fill="gray")
        for f in range(k):
            sheet.paste(overlay(pics[f], m[f], scale).resize((thumb, thumb)), (text_w + f * thumb, r * thumb))
    return sheet


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def contact_sheet(rows: list[tuple[str, Image.Image]]) -> Image.Image:
    """The wrong clips' strips one under another, each under its clip id and captions."""
    width = max(im.width for _, im in rows)
    height = sum(im.height + 16 for _, im in rows)
    sheet = Image.new("RGB", (width, height), "white")
    draw, y = ImageDraw.Draw(sheet), 0
    for title, im in rows:
        draw.text((4, y + 2), title[: width // 6], fill="black")
        sheet.paste(im, (0, y + 16))
        y += im.height + 16
    return sheet
