"""Benchmark: training throughput on this machine, ratios measured in one run.

  loader      the shard loader (JPEG decode in 2 DataLoader workers) vs decoding the raw videos
              with decord every epoch (same 2 workers, same 5 frames at the same size), on the
              built-in clips (160x120, 2 s: cheap to decode) and on 50 real clips (bench/speed/job1.py)
  cache       stage-1 epoch time with and without the frozen-backbone feature cache (cpu-small),
              and the same per-step ratio for the `paper` preset (IRv2 at 224)
  stages      clips/s of one epoch of stages 1, 2 (cached features) and 3 (streamed) for cpu-small
  paper       seconds per clip of one stage-3 step of the `paper` preset (IRv2 at 224, batch 2, M=8)

Data: a fresh built-in dataset (synth + pipeline build at 112 px) in a temp dir.
Each timed epoch follows one untimed warm-up step.
Usage: python -m bench.speed.train [--clips 160] [--out bench/speed/train_report.json] [--skip-paper]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from bench.common import built_in_dataset, report_path, write_report
from vidcap.model import create_model, make_config, save_checkpoint
from vidcap.pipeline.build import BuildConfig, build
from vidcap.pipeline.frames import sample_frames
from vidcap.shards.layout import DataInfo
from vidcap.train.config import make_train_config
from vidcap.train.data import SplitStream, torch_loader
from vidcap.train.loop import Trainer
from vidcap.train.run_folder import RunFolder


class RawVideos(Dataset):
    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(sample_frames(self.paths[i], 5, self.size).frames).permute(0, 3, 1, 2)


def epoch_clips_per_s(batches) -> float:
    t0, n = time.perf_counter(), 0
    for b in batches:
        n += len(b["clip_id"]) if isinstance(b, dict) else len(b)
    return n / (time.perf_counter() - t0)


def trainer_epoch(cfg) -> tuple[float, int, Trainer]:
    t = Trainer(cfg, progress=False)
    if t.use_cache:
        t.features("train")  # one-off, timed separately
    t.step(next(iter(t.epoch_batches(99))), 99)  # warm-up
    t0, n = time.perf_counter(), 0
    for batch in t.epoch_batches(0):
        t.step(batch, 0)
        n += len(batch["clip_id"])
    return time.perf_counter() - t0, n, t


def real_clip_loader(tmp: Path) -> dict:
    """Shards of 50 real clips (as bench/speed/job1.py cuts them) vs decoding those clips every epoch."""
    from bench.speed.job1 import make_clips

    clips = make_clips(50, tmp)
    ds = {"videos": [{"id": c.stem, "path": str(c), "split": "train", "captions": ["a clip"]} for c in clips]}
    (tmp / "real.json").write_text(json.dumps(ds))
    build(BuildConfig(dataset="json", root=str(tmp / "real.json"), out=str(tmp / "real"), size=112, shard_size=25,
                      min_count=1, progress=False))
    info = DataInfo.load(tmp / "real")
    shard = epoch_clips_per_s(torch_loader(SplitStream(info, "train", shuffle=True), 112, 16, 2))
    raw = epoch_clips_per_s(DataLoader(RawVideos([str(c) for c in clips], 112), batch_size=16, num_workers=2))
    return {"clips": len(clips), "shards_clips_per_s": round(shard, 1), "raw_decord_clips_per_s": round(raw, 1),
            "speedup": round(shard / raw, 1)}


def paper_cache_ratio(tmp: Path, pc) -> dict:
    """Stage-1 step time of the paper preset with frames (frozen IRv2 forward) vs cached features."""
    cfg = make_train_config(1, "paper", ["batch_size=16", "num_workers=0", "max_clips=32"], data=pc.data,
                            run=str(tmp / "run_paper1"), init=pc.init)
    timings = {}
    for cache in (False, True):
        cfg.feature_cache = cache
        t = Trainer(cfg, progress=False)
        t.use_cache = cache
        batches = list(t.epoch_batches(0))
        t.step(batches[0], 0)  # warm-up (and, cached, the one-off feature pass)
        t0 = time.perf_counter()
        for b in batches:
            t.step(b, 0)
        timings[cache] = (time.perf_counter() - t0) / sum(len(b["clip_id"]) for b in batches)
    return {"s_per_clip_streamed": round(timings[False], 3), "s_per_clip_cached": round(timings[True], 4),
            "speedup": round(timings[False] / timings[True], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--out", default=str(report_path(__file__)))
    ap.add_argument("--skip-paper", action="store_true")
    a = ap.parse_args()
    report: dict = {"torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        built_in_dataset(tmp, a.clips, shard_size=64)
        info = DataInfo.load(tmp / "data")
        paths = [m["source"] for m in info.metadata("train")]
        shard = epoch_clips_per_s(torch_loader(SplitStream(info, "train", shuffle=True), 112, 32, 2))
        raw = epoch_clips_per_s(DataLoader(RawVideos(paths, 112), batch_size=32, num_workers=2))
        report["loader_builtin_clips"] = {"shards_clips_per_s": round(shard, 1), "raw_decord_clips_per_s": round(raw, 1),
                                          "speedup": round(shard / raw, 2)}
        print(report["loader_builtin_clips"], flush=True)
        report["loader_real_clips"] = real_clip_loader(tmp)
        print(report["loader_real_clips"], flush=True)

        def cfg(stage, *extra):
            return make_train_config(stage, "cpu-small", ["epochs=1", *extra], data=str(tmp / "data"), run=str(tmp / "run"))

        t0 = time.perf_counter()
        cached, n, t1 = trainer_epoch(cfg(1))
        caching = time.perf_counter() - t0 - cached
        streamed, _, _ = trainer_epoch(cfg(1, "feature_cache=false"))
        report["cache_cpu_small"] = {"train_clips": n, "epoch_s_cached": round(cached, 2),
                                     "epoch_s_streamed": round(streamed, 2), "one_off_caching_s": round(caching, 2),
                                     "speedup": round(streamed / cached, 1)}
        print(report["cache_cpu_small"], flush=True)
        from vidcap.model.checkpoint import save_checkpoint as save

        save(RunFolder(tmp / "run").stage("xe").best, t1.model, info.itos, info.attributes)
        s2, n2, t2 = trainer_epoch(cfg(2))
        save(RunFolder(tmp / "run").stage("rfc+").best, t2.model, info.itos, info.attributes)
        s3, n3, _ = trainer_epoch(cfg(3))
        report["stages_cpu_small"] = {"stage1_clips_per_s": round(n / cached, 1), "stage2_clips_per_s": round(n2 / s2, 1),
                                      "stage3_clips_per_s": round(n3 / s3, 2)}
        print(report["stages_cpu_small"], flush=True)

        if not a.skip_paper:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                paper = create_model(make_config("paper", len(info.itos), n_attributes=len(info.attributes)))
            save_checkpoint(tmp / "paper.pt", paper, info.itos, info.attributes)
            pc = make_train_config(3, "paper", ["batch_size=2", "num_workers=0", "max_clips=4"], data=str(tmp / "data"),
                                   run=str(tmp / "run_paper"), init=str(tmp / "paper.pt"))
            report["cache_paper"] = paper_cache_ratio(tmp, pc)
            print(report["cache_paper"], flush=True)
            t = Trainer(pc, progress=False)
            batches = iter(t.epoch_batches(0))
            t.step(next(batches), 0)  # warm-up
            b = next(batches)
            t0 = time.perf_counter()
            t.step(b, 0)
            report["paper_stage3_step"] = {"batch": len(b["clip_id"]), "samples": pc.samples,
                                           "seconds_per_clip": round((time.perf_counter() - t0) / len(b["clip_id"]), 2)}
            print(report["paper_stage3_step"], flush=True)
    write_report(a.out, report, echo=True)


if __name__ == "__main__":
    main()
