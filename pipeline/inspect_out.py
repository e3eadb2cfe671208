"""`pipeline inspect OUT`: what a build made -- manifest summary, one sample's captions and
attributes, and a contact sheet PNG of a few samples' frames."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from pipeline.adapters import SPLITS
from pipeline.build import load_build
from pipeline.shards import iter_samples


def _first_samples(shard: Path, n: int) -> list[tuple[dict, list[Image.Image]]]:
    out = []
    for s in iter_samples(shard):
        frames = [Image.open(io.BytesIO(s["frames"][k])).convert("RGB") for k in sorted(s["frames"])]
        out.append((s["json"], frames))
        if len(out) == n:
            break
    return out


def contact_sheet(samples: list[tuple[dict, list[Image.Image]]], thumb: int = 112) -> Image.Image:
    cols = max(len(f) for _, f in samples)
    sheet = Image.new("RGB", (cols * thumb, len(samples) * (thumb + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (meta, frames) in enumerate(samples):
        y = r * (thumb + 14)
        draw.text((2, y), f"{meta['clip_id']}: {meta['captions'][0][:60] if meta['captions'] else ''}", fill="black")
        for c, f in enumerate(frames):
            sheet.paste(f.resize((thumb, thumb)), (c * thumb, y + 14))
    return sheet


def inspect(out: Path, n_samples: int = 4, png: Path | None = None) -> str:
    out = Path(out)
    build = load_build(out)
    lines = [f"{out}: built from {build['config']['dataset']} at {build['config']['root']}"]
    first_shard = None
    for split in SPLITS:
        m = json.loads((out / "shards" / f"manifest-{split}.json").read_text())
        lines.append(f"  {split:<5} {m['samples']:>6} samples in {len(m['shards'])} shards "
                     f"({sum(s['bytes'] for s in m['shards']) / 1e6:.1f} MB), {m['frames']} frames at {m['size']}px")
        if first_shard is None and m["shards"] and m["shards"][0]["samples"]:
            first_shard = out / "shards" / m["shards"][0]["name"]
    if first_shard is None:
        return "\n".join(lines + ["  no samples"])
    samples = _first_samples(first_shard, n_samples)
    meta = samples[0][0]
    attrs = pq.read_table(out / "attributes.parquet").to_pylist()
    labels = {r["clip_id"]: r["attribute_ids"] for r in pq.read_table(out / "clip_attributes.parquet").to_pylist()}
    words = [attrs[i]["word"] for i in labels.get(meta["clip_id"], [])]
    lines += [f"sample {meta['clip_id']} ({meta['split']}, decoder {meta['decoder']}, frames {meta['frame_indices']}):"]
    lines += [f"  - {c}" for c in meta["captions"][:5]]
    lines.append(f"  attributes: {' '.join(words)}")
    png = Path(png) if png else out / "contact_sheet.png"
    contact_sheet(samples).save(png)
    lines.append(f"contact sheet: {png}")
    return "\n".join(lines)
