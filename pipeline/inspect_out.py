"""`pipeline inspect OUT` (a folder or URL): what a build made -- manifest summary (every shard checked against it),
the per-shard stats (clips, successes, failures by reason), one sample's captions and attributes,
and a contact sheet PNG of a few samples' frames (with, for the realistic built-in world, each
clip's nuisances and the real scene behind it: source, offset, speed, flip, crop)."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

from vidcap.atomic import write_atomic
from vidcap.errors import UserError
from vidcap.shards.layout import SPLITS, Build
from vidcap.shards.reader import ShardError, iter_samples


def _nuisance_names(meta: dict) -> set[str]:
    rec = meta.get("nuisances") or {}
    names = {k for k in rec if k != "background"}
    if rec.get("background"):
        names.add("background:" + str(rec["background"]).split(":")[0])
    return names


def _first_samples(build: Build, split: str, n: int) -> list[tuple[dict, list[Image.Image]]]:
    """The first `n` samples of the split's first shard -- or, where the clips record nuisances (the
    realistic built-in world), first samples that together show every nuisance the shard has."""
    refs, expect = build.split(split).refs, build.split(split).expect
    scanned = []
    for s in iter_samples(build.store, refs[0], expect):
        scanned.append(s)
        if len(scanned) == max(n, 128):
            break
    picked = scanned[:n]
    if any(s["json"].get("nuisances") for s in scanned):
        todo = set().union(*(_nuisance_names(s["json"]) for s in scanned))
        picked = []
        while todo and len(picked) < max(n, 16):  # greedy cover: each new row shows the most unseen
            best = max(scanned, key=lambda s: len(_nuisance_names(s["json"]) & todo))
            picked.append(best)
            todo -= _nuisance_names(best["json"])
        picked += [s for s in scanned if s not in picked][: max(0, n - len(picked))]
    out = []
    for s in picked:
        try:
            frames = [Image.open(io.BytesIO(jpeg)).convert("RGB") for jpeg in s["frames"]]
        except Exception as e:  # a header that looked right over a broken body
            raise ShardError(f"{s['shard']}: sample {s['key']}: a frame does not decode ({e})") from None
        out.append((s["json"], frames))
    return out


def scene_text(footage: dict) -> str:
    """A clip's real scene (the ``footage`` field) in words: 'bikes.mp4 from 1.2 s at 0.88x, flipped, crop ...'."""
    crop = footage.get("crop")
    parts = [f"{footage.get('source')} from {footage.get('offset', 0):g} s at {footage.get('speed', 1):g}x"]
    if footage.get("flip"):
        parts.append("flipped")
    if isinstance(crop, list):
        parts.append("crop " + " ".join(f"{v:.2f}" for v in crop))
    if "hue" in footage:
        parts.append(f"hue {footage['hue']:+g} turn, saturation {footage.get('saturation', 1):g}")
    return ", ".join(parts)


def _nuisance_label(meta: dict) -> str:
    rec = {k: v for k, v in (meta.get("nuisances") or {}).items() if not str(v).startswith("footage:")}
    return ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in rec.items())


def contact_sheet(samples: list[tuple[dict, list[Image.Image]]], thumb: int = 112) -> Image.Image:
    cols = max(len(f) for _, f in samples)
    label = 14 + 12 * bool(any(m.get("nuisances") for m, _ in samples)) + 12 * bool(any(m.get("footage") for m, _ in samples))
    sheet = Image.new("RGB", (max(cols * thumb, 560), len(samples) * (thumb + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (meta, frames) in enumerate(samples):
        y = r * (thumb + label)
        draw.text((2, y), f"{meta['clip_id']}: {meta['captions'][0][:80] if meta['captions'] else ''}", fill="black")
        if label > 14:
            draw.text((2, y + 12), _nuisance_label(meta)[:110], fill=(150, 20, 20))
        if meta.get("footage"):
            draw.text((2, y + 24), ("scene " + scene_text(meta["footage"]))[:110], fill=(20, 20, 150))
        for c, f in enumerate(frames):
            sheet.paste(f.resize((thumb, thumb)), (c * thumb, y + label))
    return sheet


def stats_summary(build: Build, manifests: dict[str, dict]) -> list[str]:
    """Lines summarising the per-shard stats files of the shards the manifests list."""
    names = [sh["name"].removesuffix(".tar") for m in manifests.values() for sh in m["shards"]]
    stats = {n: st for n in names if (st := build.shard_stats(n)) is not None}
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


def write_png(path: Path, image) -> None:
    """The contact sheet, atomically (a device node or folder at `path` is refused, not replaced); in
    the format its suffix names (PIL's), PNG when the suffix names none (``--png sheet``: round 3, P-52)."""
    Image.init()
    fmt = Image.EXTENSION.get(path.suffix.lower(), "PNG")
    write_atomic(path, lambda f: image.save(f, format=fmt))


def inspect(out: str | Path, n_samples: int = 4, png: Path | None = None) -> str:
    """`out`: a build folder or URL. The contact sheet goes to `png` (default OUT/contact_sheet.png for a
    local build, ./contact_sheet.png for a remote one)."""
    if not 1 <= n_samples <= 64:
        raise UserError(f"--samples {n_samples}: must be 1..64")
    build = Build(out)
    summary = build.summary()
    lines = [f"{out}: built from {summary['config']['dataset']} at {summary['config']['root']}"]
    first_split, manifests = None, {}
    for split in SPLITS:
        m = manifests[split] = build.manifest(split)
        data = build.split(split)  # every shard checked: size, sha256, samples, members
        lines.append(f"  {split:<5} {m['samples']:>6} samples in {len(m['shards'])} shards "
                     f"({sum(s['bytes'] for s in m['shards']) / 1e6:.1f} MB), {m['frames']} frames at {m['size']}px")
        if first_split is None and data.refs:
            first_split = split
    lines += stats_summary(build, manifests)
    if first_split is None:
        return "\n".join(lines + ["  no samples"])
    samples = _first_samples(build, first_split, n_samples)
    meta = samples[0][0]
    attrs = build.attributes()
    labels = build.clip_attributes(len(attrs))
    words = [attrs[i]["word"] for i in labels.get(meta["clip_id"], [])]
    lines += [f"sample {meta['clip_id']} ({meta.get('split')}, decoder {meta.get('decoder')}, "
              f"frames {meta.get('frame_indices')}):"]
    lines += [f"  - {c}" for c in meta["captions"][:5]]
    lines.append(f"  attributes: {' '.join(words)}")
    scenes = [m for m, _ in samples if m.get("footage")]
    if scenes:  # the realistic world's real scenes behind (pipeline.footage)
        lines.append(f"  real scenes behind ({len(scenes)} of the {len(samples)} samples shown):")
        lines += [f"    {m['clip_id']}: {scene_text(m['footage'])}" for m in scenes]
    png = Path(png) if png else (build.store.local_path("contact_sheet.png") if build.is_local else Path("contact_sheet.png"))
    write_png(png, contact_sheet(samples))
    lines.append(f"contact sheet: {png}")
    return "\n".join(lines)
