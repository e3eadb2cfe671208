"""`pipeline build`: the thin driver that composes the adapters and the three Dask jobs.

read (adapter) -> job 1: frames -> shards (one task per shard) -> job 2: spaCy attributes
(one task per chunk of captions) -> job 3: CIDEr-D document frequencies + vocabulary (driver).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from evalkit.ngrams import document_frequencies, reference_tokens
from pipeline import attributes as attr
from pipeline.adapters import SPLITS, load_dataset
from pipeline.atomic import write_bytes_atomic, write_json_atomic
from pipeline.cluster import dask_client
from pipeline.errors import UserError
from pipeline.ffmpeg_check import require_ffmpeg
from pipeline.shards import ShardResult, ShardTask, build_shard
from pipeline.vocab import DEFAULT_MIN_COUNT, MAX_LEN, build_vocab

CAPTIONS_PER_TAG_TASK = 4000


@dataclass
class BuildConfig:
    dataset: str
    root: str
    out: str
    frames: int = 5
    size: int = 224
    quality: int = 90
    shard_size: int = 256
    workers: int | None = None
    scheduler: str | None = None
    spacy_model: str | None = None
    attributes: int = 400
    min_count: int = DEFAULT_MIN_COUNT
    timeout: float = 120.0
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        checks = [(1 <= self.frames <= 64, f"--frames {self.frames}: must be 1..64"),
                  (16 <= self.size <= 1024, f"--size {self.size}: must be 16..1024"),
                  (1 <= self.quality <= 100, f"--quality {self.quality}: must be 1..100"),
                  (self.shard_size >= 1, f"--shard-size {self.shard_size}: must be >= 1"),
                  (self.attributes >= 1, f"--attributes {self.attributes}: must be >= 1"),
                  (self.min_count >= 1, f"--min-count {self.min_count}: must be >= 1"),
                  (self.timeout > 0, f"--timeout {self.timeout}: must be > 0"),
                  (self.workers is None or self.workers >= 1, f"--workers {self.workers}: must be >= 1")]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)


def plan_shards(clips, cfg: BuildConfig) -> list[ShardTask]:
    tasks = []
    for split in SPLITS:
        members = [c for c in clips if c.split == split]
        for i in range(0, len(members), cfg.shard_size):
            group = [{"clip_id": c.clip_id, "path": str(c.path), "captions": c.captions,
                      **({"objects": c.objects} if c.objects is not None else {})}
                     for c in members[i : i + cfg.shard_size]]
            tasks.append(ShardTask(f"{split}-{i // cfg.shard_size:06d}", split, group, cfg.frames, cfg.size,
                                   cfg.quality, cfg.timeout))
    return tasks


def _prepare_out(out: Path, overwrite: bool) -> Path:
    if overwrite and out.exists():
        shutil.rmtree(out)
    shard_dir = out / "shards"
    (shard_dir / ".state").mkdir(parents=True, exist_ok=True)
    for tmp in shard_dir.glob(".*.tmp"):  # debris of a killed run
        tmp.unlink()
    return shard_dir


def run_job1(client, tasks: list[ShardTask], shard_dir: Path, progress: bool) -> list[ShardResult]:
    from distributed import as_completed

    total = sum(len(t.clips) for t in tasks)
    futures = {client.submit(build_shard, t, str(shard_dir), key=f"shard-{t.name}-{t.fingerprint()[:12]}",
                             pure=False): t for t in tasks}
    results: dict[str, ShardResult] = {}
    t0 = time.perf_counter()
    with tqdm(total=total, desc="job 1: frames -> shards", unit="clip", disable=not progress) as bar:
        for fut in as_completed(futures):
            res = fut.result()
            results[res.name] = res
            bar.update(len(futures[fut].clips))
            bar.set_postfix(clips_s=f"{bar.n / max(1e-9, time.perf_counter() - t0):.1f}",
                            skipped=sum(r.skipped for r in results.values()))
    return [results[t.name] for t in tasks]


def write_manifests(shard_dir: Path, results: list[ShardResult], cfg: BuildConfig) -> None:
    for split in SPLITS:
        rows = [r for r in results if r.split == split]
        write_json_atomic(shard_dir / f"manifest-{split}.json", {
            "split": split, "samples": sum(r.samples for r in rows), "frames": cfg.frames, "size": cfg.size,
            "quality": cfg.quality,
            "shards": [{"name": f"{r.name}.tar", "samples": r.samples, "sha256": r.sha256, "bytes": r.bytes}
                       for r in rows],
        })


def run_job2(client, clips, cfg: BuildConfig, model: str, out: Path, progress: bool) -> dict:
    caps = [c for clip in clips for c in clip.captions]
    owner = [i for i, clip in enumerate(clips) for _ in clip.captions]
    chunks = [caps[i : i + CAPTIONS_PER_TAG_TASK] for i in range(0, len(caps), CAPTIONS_PER_TAG_TASK)]
    futures = [client.submit(attr.tag_captions, ch, model, pure=False) for ch in chunks]
    tagged: list = []
    with tqdm(total=len(caps), desc="job 2: spaCy tagging", unit="caption", disable=not progress) as bar:
        for fut, ch in zip(futures, chunks, strict=True):
            tagged.extend(fut.result())
            bar.update(len(ch))
    per_clip: list[list] = [[] for _ in clips]
    for i, tags in zip(owner, tagged, strict=True):
        per_clip[i].append(tags)
    train_tags = [t for t, c in zip(per_clip, clips, strict=True) if c.split == "train"]
    ranked = attr.rank_attributes(train_tags, cfg.attributes)
    if not ranked:
        raise UserError("no attributes found: the training captions have no nouns, verbs or adjectives")
    word_to_id = {r["word"]: r["attribute_id"] for r in ranked}
    _write_parquet(out / "attributes.parquet", pa.Table.from_pylist(
        ranked, schema=pa.schema([("attribute_id", pa.int32()), ("word", pa.string()), ("pos", pa.string()),
                                  ("clip_count", pa.int64())], metadata={"spacy_model": model})))
    _write_parquet(out / "clip_attributes.parquet", pa.table({
        "clip_id": [c.clip_id for c in clips], "split": [c.split for c in clips],
        "attribute_ids": pa.array([attr.clip_labels(t, word_to_id) for t in per_clip], pa.list_(pa.int32())),
    }))
    return {"attributes": len(ranked), "spacy_model": model, "top": [r["word"] for r in ranked[:10]]}


def run_job3(clips, cfg: BuildConfig, out: Path) -> dict:
    train = [c for c in clips if c.split == "train"]
    df, n_docs = document_frequencies([[reference_tokens(c, MAX_LEN) for c in clip.captions] for clip in train])
    grams = sorted(df, key=lambda g: (len(g), g))
    table = pa.table({"ngram": [" ".join(g) for g in grams], "n": pa.array([len(g) for g in grams], pa.int8()),
                      "df": pa.array([df[g] for g in grams], pa.int32())},
                     metadata={"n_docs": str(n_docs), "max_len": str(MAX_LEN)})
    _write_parquet(out / "cider_df.parquet", table)
    vocab = build_vocab((c for clip in train for c in clip.captions), cfg.min_count, MAX_LEN)
    write_json_atomic(out / "vocab.json", vocab)
    return {"ngrams": len(grams), "documents": n_docs, "vocab": len(vocab["itos"])}


def _write_parquet(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(path, sink.getvalue().to_pybytes())


def build(cfg: BuildConfig) -> dict:
    """Run the three jobs; return (and write to OUT/build.json) the summary."""
    cfg.validate()
    require_ffmpeg()
    model = attr.resolve_model(cfg.spacy_model)
    t0 = time.perf_counter()
    data = load_dataset(cfg.dataset, Path(cfg.root))
    clips = [c for c in data.clips if c.captions]
    no_caption = [c.clip_id for c in data.clips if not c.captions]
    if not [c for c in clips if c.split == "train"]:
        raise UserError(f"{cfg.root}: no training clips with captions")
    out = Path(cfg.out)
    shard_dir = _prepare_out(out, cfg.overwrite)
    tasks = plan_shards(clips, cfg)
    with dask_client(cfg.workers, cfg.scheduler) as client:
        results = run_job1(client, tasks, shard_dir, cfg.progress)
        job2 = run_job2(client, clips, cfg, model, out, cfg.progress)
    write_manifests(shard_dir, results, cfg)
    job3 = run_job3(clips, cfg, out)
    failures = [f for r in results for f in r.failures]
    write_bytes_atomic(out / "failures.jsonl", "".join(json.dumps(f) + "\n" for f in failures).encode())
    elapsed = time.perf_counter() - t0
    summary = {
        "config": asdict(cfg),
        "splits": {s: {"clips_in": sum(c.split == s for c in clips),
                       "clips_out": sum(r.samples for r in results if r.split == s),
                       "failures": sum(f["split"] == s for f in failures)} for s in SPLITS},
        "clips_without_captions": len(no_caption),
        "empty_captions_dropped": data.empty_captions_dropped,
        "decoders": {d: sum(r.decoders.get(d, 0) for r in results) for d in ("decord", "ffmpeg")},
        "repeated_frames": sum(r.repeated for r in results),
        "shards_skipped": sum(r.skipped for r in results),
        "shards_written": sum(not r.skipped for r in results),
        "attributes": job2, "cider_df": job3,
        "elapsed_s": round(elapsed, 2),
        "clips_per_s": round(sum(r.samples for r in results) / max(elapsed, 1e-9), 2),
        "notes": data.notes,
    }
    write_json_atomic(out / "build.json", summary)
    return summary


def format_summary(s: dict, out: str) -> str:
    lines = [f"pipeline build -> {out}", f"{'split':<7}{'clips in':>10}{'clips out':>11}{'failed':>8}"]
    for split, v in s["splits"].items():
        lines.append(f"{split:<7}{v['clips_in']:>10}{v['clips_out']:>11}{v['failures']:>8}")
    lines.append(f"decoders: {s['decoders']}, repeated-frame clips: {s['repeated_frames']}, "
                 f"shards written/skipped: {s['shards_written']}/{s['shards_skipped']}")
    lines.append(f"empty captions dropped: {s['empty_captions_dropped']}, clips without captions: "
                 f"{s['clips_without_captions']}")
    lines.append(f"attributes: {s['attributes']['attributes']} ({s['attributes']['spacy_model']}), top: "
                 f"{' '.join(s['attributes']['top'])}")
    lines.append(f"vocabulary: {s['cider_df']['vocab']} tokens; CIDEr-D df: {s['cider_df']['ngrams']} n-grams over "
                 f"{s['cider_df']['documents']} clips")
    lines.append(f"elapsed {s['elapsed_s']:.1f} s, {s['clips_per_s']:.1f} clips/s"
                 + (f"; failures listed in {out}/failures.jsonl" if any(v["failures"] for v in s["splits"].values())
                    else ""))
    return "\n".join(lines)


def load_build(out: Path) -> dict:
    path = Path(out) / "build.json"
    if not path.exists():
        raise UserError(f"{out}: not a pipeline output (no build.json); run `pipeline build` first")
    return json.loads(path.read_text())
