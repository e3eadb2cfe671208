"""Benchmark: stage 3 with the whole CNN trained vs ``trunk_blocks=K`` (model/trunk.py), cpu-small.

Both from the same stage-2 checkpoint on the same training clips: seconds per optimiser step of the
whole CNN (frames streamed from the shards, every block forward and backward) and of the top above
a cached trunk (the cache built once first: its seconds reported apart). The two are timed in turn,
A B A B, so that a machine busy with something else slows both alike; the ratio is of the sums.

Data: a build and a stage-2 checkpoint of it (``--data D --init RUN/stage2/best.pt``), or by default
a fresh built-in dataset (synth + build at 112 px) and a stage-1 + stage-2 checkpoint trained on it
for one epoch each.
Usage: python -m bench.speed.trunk [--data D --init CKPT [--max-clips N]] [--trunk-blocks 3] [--steps 6] [--clips 160]
       [--out bench/speed/trunk_report.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import built_in_dataset, report_path, write_report
from vidcap.train.config import make_train_config
from vidcap.train.loop import Trainer, run_stage
from vidcap.train.run_folder import RunFolder


def step_seconds(data: str, init: str, run: Path, steps: int, overrides: list[str]) -> tuple[float, float]:
    """(seconds for `steps` optimiser steps after one warm-up step, seconds of the one-off feature cache)."""
    cfg = make_train_config(3, "cpu-small", ["epochs=1", "save_every=0", "num_workers=2", *overrides], data=data,
                            run=str(run), init=init)
    t = Trainer(cfg, progress=False)
    try:
        t0 = time.perf_counter()
        if t.use_cache:
            t.features("train")
        caching = time.perf_counter() - t0
        batches = iter(t.epoch_batches(0))
        t.step(next(batches), 0)  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            t.step(next(batches), 0)
        return time.perf_counter() - t0, caching
    finally:
        t.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--init", default=None, help="a stage-2 checkpoint of --data")
    ap.add_argument("--trunk-blocks", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--clips", type=int, default=160, help="built-in clips when no --data is given")
    ap.add_argument("--max-clips", type=int, default=None, help="training clips used (and cached) of --data")
    ap.add_argument("--out", default=str(report_path(__file__)))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, init = a.data, a.init
        if data is None:
            data = str(built_in_dataset(tmp, a.clips, shard_size=32))
            for stage in (1, 2):
                run_stage(make_train_config(stage, "cpu-small", ["epochs=1", "num_workers=0"], data=data,
                                            run=str(tmp / "base")), progress=False)
            init = str(RunFolder(tmp / "base").stage("rfc+").best)
        whole, top, caching = [], [], []
        cap = [f"max_clips={a.max_clips}"] if a.max_clips else []
        for rep in range(2):  # A B A B
            whole.append(step_seconds(data, init, tmp / f"whole{rep}", a.steps, cap)[0])
            s, c = step_seconds(data, init, tmp / f"trunk{rep}", a.steps, [*cap, f"trunk_blocks={a.trunk_blocks}"])
            top.append(s)
            caching.append(c)
    n = 2 * a.steps
    report = {"torch_threads": torch.get_num_threads(), "data": a.data or f"built-in, {a.clips} clips",
              "trunk_blocks": a.trunk_blocks, "steps_timed_each": n,
              "s_per_step_whole_cnn": round(sum(whole) / n, 2), "s_per_step_trunk": round(sum(top) / n, 2),
              "one_off_trunk_cache_s": round(min(caching), 1), "speedup": round(sum(whole) / sum(top), 2)}
    print(report, flush=True)
    write_report(Path(a.out), report)


if __name__ == "__main__":
    main()
