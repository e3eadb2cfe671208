"""`pipeline build`: the thin driver that composes the adapters and the three Dask jobs.

read (adapter) -> job 1: frames -> shards (one task per shard) -> job 2: spaCy attributes
(one task per chunk of captions) -> job 3: CIDEr-D document frequencies + vocabulary (driver).

What the driver guarantees about OUT:
- every path is made absolute here, before any task is submitted, so workers started in any folder
  (``--scheduler``) read the same clips and write into the same OUT;
- before any shard is (re)written, the outputs that describe a finished build -- build.json, the
  manifests, failures, vocabulary, attributes, df -- are removed, and so are shards that the new
  plan does not have: a build killed midway leaves no manifest to trust, so readers refuse it
  instead of mixing old and new shards; they are written again, manifests last, when it completes;
- a split whose every clip failed ends the build with an error (exit 2), failures.jsonl written.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from vidcap.errors import UserError
from vidcap.evalkit.ngrams import document_frequencies, reference_tokens
from vidcap.owned import MARKER, check_ours, mark, only_names, remove_ours, resolve_out
from vidcap.pipeline import attributes as attr
from vidcap.pipeline.adapters import load_dataset
from vidcap.pipeline.clip_worker import DEFAULT_MEMORY_MB
from vidcap.pipeline.cluster import check_scheduler_url, dask_client, run_tasks
from vidcap.pipeline.ffmpeg_check import require_ffmpeg
from vidcap.pipeline.frames_job import ShardResult, ShardTask, build_shard
from vidcap.pipeline.vocab import DEFAULT_MIN_COUNT, build_vocab
from vidcap.shards import layout
from vidcap.shards.layout import BUILD_OUTPUTS, SPLITS
from vidcap.tokens import MAX_LEN

BUILD_COMMAND = "pipeline build"  # the name in the marker of the folders it makes (vidcap/owned.py)
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
    worker_timeout: float = 60.0
    decoder_memory_mb: int = DEFAULT_MEMORY_MB
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        checks = [(1 <= self.frames <= 64, f"--frames {self.frames}: must be 1..64"),
                  (16 <= self.size <= 1024, f"--size {self.size}: must be 16..1024"),
                  (1 <= self.quality <= 100, f"--quality {self.quality}: must be 1..100"),
                  (self.shard_size >= 1, f"--shard-size {self.shard_size}: must be >= 1"),
                  (self.attributes >= 1, f"--attributes {self.attributes}: must be >= 1"),
                  (self.min_count >= 1, f"--min-count {self.min_count}: must be >= 1"),
                  (0 < self.timeout <= 86400, f"--timeout {self.timeout}: must be > 0 and <= 86400 (s)"),
                  (0 < self.worker_timeout <= 86400, f"--worker-timeout {self.worker_timeout}: must be > 0 and <= 86400 (s)"),
                  (self.decoder_memory_mb == 0 or 256 <= self.decoder_memory_mb <= 1 << 20,
                   f"--decoder-memory {self.decoder_memory_mb}: must be 256..1048576 (MB), or 0 for no cap"),
                  (self.workers is None or self.workers >= 1, f"--workers {self.workers}: must be >= 1")]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        if self.scheduler is not None:
            check_scheduler_url(self.scheduler)
        out = resolve_out(self.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {self.out}: exists and is not a directory")
        if self.overwrite and out.is_dir() and any(out.iterdir()):
            check_ours(out, BUILD_COMMAND, "a pipeline output", is_build_layout)


def is_build_layout(out: Path) -> bool:
    """A folder holding only what `pipeline build` writes (a build made before the marker file): the
    layout's files, its shards folder with nothing but shards, manifests and their sidecars."""
    def top(name: str) -> bool:
        return name in (*BUILD_OUTPUTS, layout.SHARDS, "contact_sheet.png", MARKER) or (
            name.startswith(".") and name.endswith(".tmp"))

    def shard(name: str) -> bool:
        return name == ".state" or name.endswith((".tar", "_stats.json", ".tmp")) or (
            name.startswith("manifest-") and name.endswith(".json"))

    shards = out / layout.SHARDS
    return only_names(out, top) and (not shards.exists() or only_names(shards, shard))


def plan_shards(clips, cfg: BuildConfig) -> list[ShardTask]:
    tasks = []
    for split in SPLITS:
        members = [c for c in clips if c.split == split]
        for i in range(0, len(members), cfg.shard_size):
            group = [{"clip_id": c.clip_id, "path": os.path.abspath(c.path), "captions": c.captions,
                      **({"objects": c.objects} if c.objects is not None else {}),
                      **({"nuisances": c.nuisances} if c.nuisances is not None else {}),
                      **({"footage": c.footage} if c.footage is not None else {})}
                     for c in members[i : i + cfg.shard_size]]
            tasks.append(ShardTask(layout.shard_stem(split, i // cfg.shard_size), split, group, cfg.frames, cfg.size,
                                   cfg.quality, cfg.timeout, cfg.decoder_memory_mb))
    return tasks


def _prepare_out(out: Path, overwrite: bool, tasks: list[ShardTask]) -> Path:
    """Make OUT ready for `tasks`: invalidate a previous build's outputs before any shard is rewritten."""
    if overwrite and out.is_dir() and any(out.iterdir()):  # checked again: validate ran before Dask started
        remove_ours(out, BUILD_COMMAND, "a pipeline output", is_build_layout)
    shard_dir = out / layout.SHARDS
    (shard_dir / ".state").mkdir(parents=True, exist_ok=True)
    mark(out, BUILD_COMMAND)  # from here on --overwrite may replace this folder
    for name in BUILD_OUTPUTS:  # build.json first: from here on OUT is not a finished build
        (out / name).unlink(missing_ok=True)
    for split in SPLITS:
        (out / layout.manifest_rel(split)).unlink(missing_ok=True)
    planned = {t.name for t in tasks}
    for path in [*shard_dir.glob("*.tar"), *shard_dir.glob("*_stats.json"), *(shard_dir / ".state").glob("*.json")]:
        if path.name.removesuffix(".tar").removesuffix("_stats.json").removesuffix(".json") not in planned:
            path.unlink()  # a shard of an older plan (other --shard-size, fewer clips)
    for tmp in [*shard_dir.glob(".*.tmp"), *out.glob(".*.tmp"), *(shard_dir / ".state").glob(".*.tmp")]:
        tmp.unlink()  # debris of a killed run
    return shard_dir


def run_frames_job(client, tasks: list[ShardTask], shard_dir: Path, progress: bool,
             worker_timeout: float = 60.0) -> list[ShardResult]:
    total = sum(len(t.clips) for t in tasks)
    calls = [(t, str(shard_dir.absolute())) for t in tasks]
    keys = [f"shard-{t.name}-{t.fingerprint()[:12]}" for t in tasks]
    results: dict[str, ShardResult] = {}
    t0 = time.perf_counter()
    with tqdm(total=total, desc="job 1: frames -> shards", unit="clip", disable=not progress) as bar:
        for i, res in run_tasks(client, build_shard, calls, worker_timeout, "job 1 (shards)", keys):
            results[res.name] = res
            bar.update(len(tasks[i].clips))
            bar.set_postfix(clips_s=f"{bar.n / max(1e-9, time.perf_counter() - t0):.1f}",
                            skipped=sum(r.skipped for r in results.values()))
    return [results[t.name] for t in tasks]


def check_splits(results: list[ShardResult], tasks: list[ShardTask], out: Path) -> None:
    """A split whose every clip failed is an error: nothing downstream could use it."""
    for split in SPLITS:
        n_in = sum(len(t.clips) for t in tasks if t.split == split)
        fails = [f for r in results if r.split == split for f in r.failures]
        if n_in and len(fails) == n_in:
            (reason, n), = Counter(f["reason"] for f in fails).most_common(1)
            example = next(f for f in fails if f["reason"] == reason)
            raise UserError(f"every clip of split {split} failed ({n_in} clips; {n} {reason}, e.g. {example['path']}: "
                            f"{example['error']}); see {out / layout.FAILURES}")


def write_manifests(out: Path, results: list[ShardResult], cfg: BuildConfig) -> None:
    for split in SPLITS:
        layout.write_manifest(out, split, [{"name": f"{r.name}.tar", "samples": r.samples, "sha256": r.sha256,
                                            "bytes": r.bytes} for r in results if r.split == split],
                              cfg.frames, cfg.size, cfg.quality)


def run_attributes_job(client, clips, cfg: BuildConfig, model: str, out: Path, progress: bool) -> dict:
    """spaCy over every caption, one Dask task per ~4,000 captions' worth of clips. A task returns,
    per clip, one string of its distinct kept words, and word counts over its training clips: the
    driver never holds per-caption tags (which grow with captions x tokens)."""
    chunks, size = [[]], 0
    for i, clip in enumerate(clips):
        if size >= CAPTIONS_PER_TAG_TASK:
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += len(clip.captions)
    calls = [([clips[i].captions for i in ch], [clips[i].split == "train" for i in ch], model) for ch in chunks]
    words: list[str] = [""] * len(clips)
    clip_count: Counter = Counter()
    pos_count: Counter = Counter()
    with tqdm(total=sum(len(c.captions) for c in clips), desc="job 2: spaCy tagging", unit="caption",
              disable=not progress) as bar:
        for n, (chunk_words, counts, pos) in run_tasks(client, attr.tag_clips, calls, cfg.worker_timeout,
                                                        "job 2 (spaCy tagging)"):
            chunk = chunks[n]
            for i, w in zip(chunk, chunk_words, strict=True):
                words[i] = w
            clip_count.update(counts)
            pos_count.update(pos)
            bar.update(sum(len(clips[i].captions) for i in chunk))
    ranked = attr.rank_attributes(clip_count, pos_count, cfg.attributes)
    note = attr.language_note(model, attr.model_language(model), [c for clip in clips if clip.split == "train"
                                                                  for c in clip.captions])
    if not ranked and any(c.split == "train" for c in clips):  # (no training clips: an evaluation-only build)
        raise UserError("no attributes found: the training captions have no nouns, verbs or adjectives"
                        + (f" ({note})" if note else f" (as tagged by spaCy model {model})"))
    word_to_id = {r["word"]: r["attribute_id"] for r in ranked}
    layout.write_attributes(out, ranked, model)
    layout.write_clip_attributes(out, [c.clip_id for c in clips], [c.split for c in clips],
                                 [attr.clip_labels(w, word_to_id) for w in words])
    return {"attributes": len(ranked), "spacy_model": model, "top": [r["word"] for r in ranked[:10]],
            **({"note": note} if note else {})}


def run_df_vocab_job(clips, cfg: BuildConfig, out: Path) -> dict:
    train = [c for c in clips if c.split == "train"]
    df, n_docs = document_frequencies([[reference_tokens(c, MAX_LEN) for c in clip.captions] for clip in train])
    layout.write_cider_df(out, df, n_docs, MAX_LEN)
    vocab = build_vocab((c for clip in train for c in clip.captions), cfg.min_count, MAX_LEN)
    layout.write_vocab(out, vocab)
    return {"ngrams": len(df), "documents": n_docs, "vocab": len(vocab["itos"])}


def build(cfg: BuildConfig) -> dict:
    """Run the three jobs; return (and write to OUT/build.json) the summary."""
    cfg.validate()
    require_ffmpeg()
    model = attr.resolve_model(cfg.spacy_model)
    t0 = time.perf_counter()
    data = load_dataset(cfg.dataset, Path(cfg.root))
    clips = [c for c in data.clips if c.captions]
    no_caption = [c.clip_id for c in data.clips if not c.captions]
    if not clips:
        raise UserError(f"{cfg.root}: no clips with captions")
    if not [c for c in clips if c.split == "train"]:  # an evaluation-only build: a note, not an error
        data.notes.append("no training clips: an evaluation-only build (vocabulary of the special tokens only, "
                          "no attributes); models trained elsewhere are evaluated on it with their own vocabulary")
    out = resolve_out(cfg.out)
    tasks = plan_shards(clips, cfg)
    seconds = {"read": time.perf_counter() - t0}
    with dask_client(cfg.workers, cfg.scheduler) as client:  # reachable: only now touch OUT
        shard_dir = _prepare_out(out, cfg.overwrite, tasks)
        t1 = time.perf_counter()
        results = run_frames_job(client, tasks, shard_dir, cfg.progress, cfg.worker_timeout)
        seconds["shards"] = time.perf_counter() - t1
        failures = [f for r in results for f in r.failures]
        layout.write_failures(out, failures)
        check_splits(results, tasks, out)
        t1 = time.perf_counter()
        job2 = run_attributes_job(client, clips, cfg, model, out, cfg.progress)
        seconds["attributes"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    job3 = run_df_vocab_job(clips, cfg, out)
    seconds["df_vocab"] = time.perf_counter() - t1
    write_manifests(out, results, cfg)
    elapsed = time.perf_counter() - t0
    summary = {
        "format_version": layout.FORMAT_VERSION,
        "config": asdict(cfg),
        "splits": {s: {"clips_in": sum(c.split == s for c in clips),
                       "clips_out": sum(r.samples for r in results if r.split == s),
                       "failures": sum(f["split"] == s for f in failures)} for s in SPLITS},
        "failures_by_reason": dict(sorted(Counter(f["reason"] for f in failures).items())),
        "clips_without_captions": len(no_caption),
        "empty_captions_dropped": data.empty_captions_dropped,
        "decoders": {d: sum(r.decoders.get(d, 0) for r in results) for d in ("decord", "ffmpeg")},
        "repeated_frames": sum(r.repeated for r in results),
        "shards_skipped": sum(r.skipped for r in results),
        "shards_written": sum(not r.skipped for r in results),
        "attributes": job2, "cider_df": job3,
        "elapsed_s": round(elapsed, 2),
        "job_seconds": {k: round(v, 2) for k, v in seconds.items()},  # read annotations, job 1, job 2, job 3
        "clips_per_s": round(sum(r.samples for r in results) / max(elapsed, 1e-9), 2),
        "notes": data.notes,
        **({"heldout_triples": data.heldout_triples} if data.heldout_triples is not None else {}),
    }
    layout.write_summary(out, summary)
    return summary


def format_summary(s: dict, out: str) -> str:
    lines = [f"pipeline build -> {out}", f"{'split':<7}{'clips in':>10}{'clips out':>11}{'failed':>8}"]
    for split, v in s["splits"].items():
        lines.append(f"{split:<7}{v['clips_in']:>10}{v['clips_out']:>11}{v['failures']:>8}")
    lines.append(f"decoders: {s['decoders']}, repeated-frame clips: {s['repeated_frames']}, "
                 f"shards written/skipped: {s['shards_written']}/{s['shards_skipped']}")
    if s["failures_by_reason"]:
        lines.append("failures by reason: " + ", ".join(f"{k} {v}" for k, v in s["failures_by_reason"].items()))
    lines.append(f"empty or punctuation-only captions dropped: {s['empty_captions_dropped']}, clips without captions: "
                 f"{s['clips_without_captions']}")
    lines.append(f"attributes: {s['attributes']['attributes']} ({s['attributes']['spacy_model']}), top: "
                 f"{' '.join(s['attributes']['top'])}")
    if s["attributes"].get("note"):
        lines.append(f"note: {s['attributes']['note']}")
    lines.append(f"vocabulary: {s['cider_df']['vocab']} tokens; CIDEr-D df: {s['cider_df']['ngrams']} n-grams over "
                 f"{s['cider_df']['documents']} clips")
    lines.append(f"elapsed {s['elapsed_s']:.1f} s, {s['clips_per_s']:.1f} clips/s"
                 + (f"; failures listed in {out}/{layout.FAILURES}" if any(v["failures"] for v in s["splits"].values())
                    else ""))
    return "\n".join(lines)

