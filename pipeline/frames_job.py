"""Job 1's unit of work: one WebDataset shard from a fixed, ordered group of clips.

A shard is a plain tar in the format of ``vidcap.shards`` (its writer, reader and file names),
written deterministically so the same clips and settings give the same bytes however many workers
run. It is written to a temporary name and renamed. Beside it, ``NAME_stats.json`` counts
its clips, successes and failures by reason (like video2dataset's per-shard stats), and a sidecar
``.state/NAME.json`` (sha256, samples, failures, settings fingerprint) written last marks it
complete, so a re-run can skip it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vidcap.atomic import write_bytes_atomic, write_json_atomic
from vidcap.pipeline.clip_worker import DEFAULT_MEMORY_MB, ClipDecoder, ClipFailed
from vidcap.shards.layout import state_rel, stats_rel
from vidcap.shards.writer import ShardTar, sample_json

# Bumped when the bytes a task writes change for the same clips and settings (2: percent-encoded keys).
LAYOUT_VERSION = 2


@dataclass
class ShardTask:
    name: str  # e.g. "train-000003"
    split: str
    clips: list[dict]  # {"clip_id", "path" (absolute), "captions"[, "objects"]}
    frames: int
    size: int
    quality: int
    timeout: float
    memory_mb: int = DEFAULT_MEMORY_MB

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps([LAYOUT_VERSION, self.frames, self.size, self.quality, self.clips],
                                      sort_keys=True).encode())
        return h.hexdigest()


@dataclass
class ShardResult:
    name: str
    split: str
    samples: int
    sha256: str
    bytes: int
    failures: list[dict] = field(default_factory=list)
    decoders: dict = field(default_factory=dict)
    repeated: int = 0
    seconds: float = 0.0
    skipped: bool = False

    def stats(self) -> dict:
        """The per-shard stats file's content."""
        return {"shard": f"{self.name}.tar", "split": self.split, "count": self.samples + len(self.failures),
                "successes": self.samples, "failed": len(self.failures),
                "failures_by_reason": dict(sorted(Counter(f["reason"] for f in self.failures).items())),
                "decoders": self.decoders, "repeated_frames": self.repeated, "seconds": self.seconds}


def state_path(shard_dir: Path, name: str) -> Path:
    return shard_dir.parent / state_rel(name)


def stats_path(shard_dir: Path, name: str) -> Path:
    return shard_dir.parent / stats_rel(name)


def completed(shard_dir: Path, task: ShardTask) -> ShardResult | None:
    """The recorded result if this shard exists, matches its sha256 and was made with these settings."""
    tar_path, state = shard_dir / f"{task.name}.tar", state_path(shard_dir, task.name)
    if not (tar_path.exists() and state.exists()):
        return None
    try:
        rec = json.loads(state.read_text())
        if rec.get("fingerprint") != task.fingerprint():
            return None
        if hashlib.sha256(tar_path.read_bytes()).hexdigest() != rec["result"]["sha256"]:
            return None
        return ShardResult(**{**rec["result"], "skipped": True})
    except (ValueError, KeyError, TypeError):  # a damaged sidecar: redo the shard
        return None


def build_shard(task: ShardTask, shard_dir: str) -> ShardResult:
    """Decode, encode and write one shard (a Dask task); skips it when already complete."""
    shard_dir = Path(shard_dir)
    done = completed(shard_dir, task)
    if done is not None:
        if not stats_path(shard_dir, task.name).exists():
            write_json_atomic(stats_path(shard_dir, task.name), done.stats())
        return done
    t0 = time.perf_counter()
    result = ShardResult(task.name, task.split, 0, "", 0)
    tar = ShardTar()
    with ClipDecoder(task.frames, task.size, task.quality, task.timeout, task.memory_mb) as decoder:
        for clip in task.clips:
            try:
                rep = decoder.decode(clip["path"])
            except ClipFailed as e:
                result.failures.append({"clip_id": clip["clip_id"], "path": clip["path"], "split": task.split,
                                        "shard": f"{task.name}.tar", "reason": e.reason, "error": str(e)})
                continue
            tar.add_sample(clip["clip_id"], rep["jpegs"], sample_json(clip, task.split, rep, task.size))
            result.samples += 1
            result.decoders[rep["decoder"]] = result.decoders.get(rep["decoder"], 0) + 1
            result.repeated += int(rep["repeated"])
    data, result.sha256 = tar.finish()
    result.bytes = len(data)
    result.seconds = round(time.perf_counter() - t0, 3)
    write_bytes_atomic(shard_dir / f"{task.name}.tar", data)
    write_json_atomic(stats_path(shard_dir, task.name), result.stats())
    write_json_atomic(state_path(shard_dir, task.name), {"fingerprint": task.fingerprint(), "result": asdict(result)})
    return result
