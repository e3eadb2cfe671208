"""Benchmark: what `save_every` costs -- one last.pt write against the steps between two of them.

For cpu-small stages 1 (cached features), 2 (cached, M = 8) and 3 (frames streamed, CNN trained):
seconds per optimiser step (10 timed steps after a warm-up) and seconds per last.pt (weights,
optimiser, every RNG state; written, fsynced and renamed; 5 timed). Reported: the minutes of work
between two checkpoints at save_every = 100 (the default) and the share of the time the saves take.
Data: a fresh built-in dataset (synth + pipeline build at 112 px) in a temp dir.

Usage: python -m bench.speed.checkpoint [--clips 160] [--out bench/speed/checkpoint_report.json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.common import built_in_dataset, report_path, write_report
from vidcap.model.checkpoint import save_checkpoint
from vidcap.train.config import make_train_config
from vidcap.train.loop import Trainer
from vidcap.train.recipes import STAGES
from vidcap.train.resume import Position
from vidcap.train.run_folder import LAST, RunFolder

SAVE_EVERY = 100


def measure(stage: int, data: Path, run: Path) -> dict:
    cfg = make_train_config(stage, "cpu-small", ["num_workers=2"], data=str(data), run=str(run))
    t = Trainer(cfg, progress=False)
    batches = (b for epoch in range(1000) for b in t.epoch_batches(epoch))
    t.step(next(batches), 0)  # warm-up (and, cached, the one-off feature pass)
    t0, n = time.perf_counter(), 0
    for _ in range(10):
        t.step(next(batches), 0)
        n += 1
    step_s = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(5):
        t.save(LAST, Position(0, n, n))
    save_s = (time.perf_counter() - t0) / 5
    if stage < 3:
        save_checkpoint(RunFolder(run).stage(STAGES[stage]).best, t.model, t.info.itos, t.info.attributes)
    t.close()
    return {"batch": cfg.batch_size, "step_s": round(step_s, 3), "save_s": round(save_s, 3),
            "last_pt_mb": round(RunFolder(run).stage(STAGES[stage]).last.stat().st_size / 1e6, 1),
            "minutes_between_saves": round(SAVE_EVERY * step_s / 60, 1),
            "save_share_pct": round(100 * save_s / (SAVE_EVERY * step_s + save_s), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=160)
    ap.add_argument("--out", default=str(report_path(__file__)))
    a = ap.parse_args()
    report: dict = {"load_avg_at_start": os.getloadavg()[0], "save_every": SAVE_EVERY}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        built_in_dataset(tmp, a.clips)
        for stage in (1, 2, 3):
            report[f"stage{stage}"] = measure(stage, tmp / "data", tmp / "run")
            print(stage, report[f"stage{stage}"], flush=True)
    report["load_avg_at_end"] = os.getloadavg()[0]
    write_report(a.out, report, echo=True)


if __name__ == "__main__":
    main()
