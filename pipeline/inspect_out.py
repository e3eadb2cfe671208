"""`pipeline inspect OUT`: what a build made -- manifest summary (every shard checked against it),
the per-shard stats (clips, successes, failures by reason), one sample's captions and attributes,
and a contact sheet PNG of a few samples' frames."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from evalkit.errors import UserError
from evalkit.jsonfile import read_json
from pipeline.adapters import SPLITS
from pipeline.build import load_build
from pipeline.shard_writer import stats_path
from pipeline.shards import Expect, ShardError, iter_samples, load_manifest, verified_shards


def _first_samples(shard: str, n: int, expect: Expect) -> list[tuple[dict, list[Image.Image]]]:
    out = []
    for s in iter_samples(shard, expect):
        try:
            frames = [Image.open(io.BytesIO(s["frames"][k])).convert("RGB") for k in sorted(s["frames"])]
        except Exception as e:  # a header that looked right over a broken body
            raise ShardError(f"{shard}: sample {s['key']}: a frame does not decode ({e})") from None
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


def _table(path: Path) -> list[dict]:
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # not Parquet, or damaged: name the file, not pyarrow's internals
        raise UserError(f"{path}: not a Parquet table ({type(e).__name__}); rebuild with `pipeline build`") from None


def stats_summary(shard_dir: Path, manifests: dict[str, dict]) -> list[str]:
    """Lines summarising the per-shard stats files of the shards the manifests list."""
    names = [sh["name"].removesuffix(".tar") for m in manifests.values() for sh in m["shards"]]
    stats = {n: read_json(stats_path(shard_dir, n), "stats file") for n in names if stats_path(shard_dir, n).exists()}
    stats = {n: st for n, st in stats.items() if isinstance(st, dict)
             and all(isinstance(st.get(k), int) for k in ("count", "successes", "failed"))
             and isinstance(st.get("failures_by_reason", {}), dict)}
    if not stats:
        return ["  per-shard stats: none (built before stats files existed)"]
    reasons: Counter = Counter()
    for st in stats.values():
        reasons.update(st.get("failures_by_reason", {}))
    line = (f"  per-shard stats: {len(stats)} shards, {sum(st['count'] for st in stats.values())} clips, "
            f"{sum(st['successes'] for st in stats.values())} ok, {sum(st['failed'] for st in stats.values())} failed")
    if reasons:
        line += " (" + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) + ")"
    lines = [line]
    worst = max(stats.items(), key=lambda kv: (kv[1]["failed"], kv[0]))
    if worst[1]["failed"]:
        lines.append(f"  most failures: {worst[0]}.tar, {worst[1]['failed']} of {worst[1]['count']} clips "
                     f"(details in failures.jsonl)")
    return lines


def inspect(out: Path, n_samples: int = 4, png: Path | None = None) -> str:
    if not 1 <= n_samples <= 64:
        raise UserError(f"--samples {n_samples}: must be 1..64")
    out = Path(out)
    build = load_build(out)
    shard_dir = out / "shards"
    lines = [f"{out}: built from {build['config']['dataset']} at {build['config']['root']}"]
    first_shard, manifests = None, {}
    for split in SPLITS:
        m = manifests[split] = load_manifest(shard_dir, split)
        shards = verified_shards(shard_dir, split)  # every shard checked: size, sha256, samples, members
        lines.append(f"  {split:<5} {m['samples']:>6} samples in {len(m['shards'])} shards "
                     f"({sum(s['bytes'] for s in m['shards']) / 1e6:.1f} MB), {m['frames']} frames at {m['size']}px")
        if first_shard is None and shards:
            first_shard, expect = shards[0].path, Expect(m["frames"], m["size"])
    lines += stats_summary(shard_dir, manifests)
    if first_shard is None:
        return "\n".join(lines + ["  no samples"])
    samples = _first_samples(first_shard, n_samples, expect)
    meta = samples[0][0]
    attrs, labels = _table(out / "attributes.parquet"), _table(out / "clip_attributes.parquet")
    try:
        ids = next((r["attribute_ids"] for r in labels if r["clip_id"] == meta["clip_id"]), [])
        words = [attrs[i]["word"] for i in ids]
    except (KeyError, IndexError, TypeError):
        raise UserError(f"{out / 'clip_attributes.parquet'}: does not match attributes.parquet; rebuild with "
                        "`pipeline build`") from None
    lines += [f"sample {meta['clip_id']} ({meta.get('split')}, decoder {meta.get('decoder')}, "
              f"frames {meta.get('frame_indices')}):"]
    lines += [f"  - {c}" for c in meta["captions"][:5]]
    lines.append(f"  attributes: {' '.join(words)}")
    png = Path(png) if png else out / "contact_sheet.png"
    contact_sheet(samples).save(png)
    lines.append(f"contact sheet: {png}")
    return "\n".join(lines)
