"""Benchmark: data-parallel training -- clips/s of 1 vs 2 torchrun processes, one thread each.

  stage1_streaming  stage 1 (cpu-small) with feature_cache=false: every step decodes the frames and
                    runs the frozen CNN forward before the LSTM step
  stage3            stage 3 (cpu-small: CNN trained, REINFORCE with M = 4 samples, attribute BCE)

Both as the README runs them: ``torchrun --standalone --nproc_per_node N train -- --stage S ...``,
with OMP_NUM_THREADS=1 and num_workers=0 (each process decodes its own frames on its one thread),
so N processes use N cores. Throughput is the trainer's own epoch record -- clips of all ranks over
the epoch's training seconds -- of the second epoch (the first pays for start-up). Data: a fresh
built-in dataset (synth + pipeline build at 112 px). Ratios come from one run; on a 2-core machine
shared with other work they are a lower bound of what two free cores give.

Usage: python -m bench.speed.ddp [--clips 300] [--out bench/speed/ddp_report.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

from bench.common import built_in_dataset, report_path, tool, write_report
from vidcap.model import S2VTCaptioner, make_config, save_checkpoint
from vidcap.shards.layout import DataInfo
from vidcap.train.recipes import STAGES
from vidcap.train.run_folder import RunFolder


def clips_per_s(n: int, stage: str, data: Path, run: Path, extra: list[str]) -> dict:
    cmd = [tool("torchrun"), "--standalone", "--nproc_per_node", str(n), tool("train"), "--", "--stage",
           stage, "--data", str(data), "--run", str(run), "--preset", "cpu-small", "--quiet", "epochs=2",
           "eval_every=99", "num_workers=0", "save_every=0", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    recs = [json.loads(x) for x in RunFolder(run).stage(STAGES[int(stage)]).metrics.read_text().splitlines()]
    last = [x for x in recs if x["event"] == "epoch"][-1]
    return {"processes": n, "clips_per_s": last["clips_per_s"], "epoch_s": last["train_seconds"],
            "steps_per_rank": last["steps"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=300)
    ap.add_argument("--out", default=str(report_path(__file__)))
    a = ap.parse_args()
    report: dict = {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()[0], "threads_per_process": 1}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        built_in_dataset(tmp, a.clips)
        info = DataInfo.load(tmp / "data")
        report["train_clips"] = len(info.metadata("train"))
        init = tmp / "init.pt"
        save_checkpoint(init, S2VTCaptioner(make_config("cpu-small", len(info.itos), n_attributes=len(info.attributes))),
                        info.itos, info.attributes)
        for name, stage, extra in (("stage1_streaming", "1", ["feature_cache=false"]),
                                   ("stage3", "3", [f"--init={init}"])):
            one = clips_per_s(1, stage, tmp / "data", tmp / f"run-{name}-1", extra)
            two = clips_per_s(2, stage, tmp / "data", tmp / f"run-{name}-2", extra)
            report[name] = {"one": one, "two": two, "speedup": round(two["clips_per_s"] / one["clips_per_s"], 2)}
            print(name, report[name], flush=True)
    report["load_avg_at_end"] = os.getloadavg()[0]
    write_report(a.out, report, echo=True)


if __name__ == "__main__":
    main()
