"""Benchmark: the pipeline at scale -- job 1's throughput and the driver's memory as the data grows.

  sizes     `pipeline build` (2 Dask workers, --shard-size 64, 224 px) on nested subsets of one
            built-in dataset -- 300, 1,200 and 4,800 clips, each split in the 70/10/20 proportions
            of the whole: job 1 (frames -> shards) clips/s and ms per clip, and the driver's peak
            RSS. Each build runs in a fresh Python that reports its own ru_maxrss: the driver alone
            (with the in-process Dask scheduler), not the workers or the decoder subprocesses.
  workers   job 1 on the 1,200 clips with 1 and with 2 Dask worker processes.

Flat means: the marginal job-1 cost of a clip (between consecutive sizes) constant, and the driver's
peak RSS growing by no more than what one clip's annotation costs (a build pays a fixed start, so
whole-job ms per clip falls with size). `--compare-with DIR` also builds the largest size with
another commit's tree (`git archive COMMIT | tar -x -C DIR`) for a before/after of the driver's RSS. The clips are rendered once by `pipeline synth`, 1 s
long by default (`--seconds`): 4,800 2-second clips take ~7 min to render on 2 cores, and job 1
decodes the same 5 frames whatever the length. Ratios come from one run.

Usage: python -m bench.speed.scale [--sizes 300,1200,4800] [--seconds 1] [--out bench/speed/scale_report.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, report_path, write_report
from vidcap.pipeline.synth import SPLIT_FRACTIONS, synthesize

DRIVER = """
import json, resource, sys
from vidcap.pipeline.build import BuildConfig, build
s = build(BuildConfig(**json.loads(sys.argv[1])))
print(json.dumps({"summary": s, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def subset(synth: Path, n: int, dst: Path) -> Path:
    """The first n clips in the whole's split proportions (nested: 300 ⊂ 1,200 ⊂ 4,800)."""
    info = json.loads((synth / "videodatainfo.json").read_text())
    keep = set()
    for split, frac in SPLIT_FRACTIONS:
        ids = [v["video_id"] for v in info["videos"] if v["split"] == split]
        keep.update(ids[: round(frac * n)])
    dst.mkdir(parents=True)
    (dst / "videos").symlink_to(synth / "videos")
    (dst / "videodatainfo.json").write_text(json.dumps({
        **info, "videos": [v for v in info["videos"] if v["video_id"] in keep],
        "sentences": [s for s in info["sentences"] if s["video_id"] in keep]}))
    return dst


def driver(root: Path, out: Path, workers: int, source: Path = REPO) -> dict:
    """`pipeline build` in a fresh Python importing vidcap from `source`: its summary and peak RSS."""
    cfg = {"dataset": "msrvtt", "root": str(root), "out": str(out), "size": 224, "shard_size": 64,
           "workers": workers, "progress": False}
    r = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cfg)], capture_output=True, text=True, cwd=source,
                       env={**os.environ, "PYTHONPATH": str(source)})
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_build(root: Path, out: Path, workers: int) -> dict:
    t0 = time.perf_counter()
    got = driver(root, out, workers)
    s = got["summary"]
    clips = sum(v["clips_out"] for v in s["splits"].values())
    job1 = s["job_seconds"]["shards"]
    return {"clips": clips, "workers": workers, "job1_s": job1, "job1_clips_per_s": round(clips / job1, 1),
            "job1_ms_per_clip": round(1000 * job1 / clips, 2), "job2_s": s["job_seconds"]["attributes"],
            "job3_s": s["job_seconds"]["df_vocab"], "build_s": round(time.perf_counter() - t0, 1),
            "driver_peak_rss_mb": round(got["maxrss_mb"], 1)}


def ratios(runs: list[dict]) -> dict:
    """Flatness: whole-job and marginal (between consecutive sizes) ms per clip, and RSS growth.

    A build pays a fixed start (each worker's imports, a decoder subprocess per shard), so whole-job
    ms per clip falls with size; the marginal cost -- what each further clip adds -- is the flat one."""
    small, big = runs[0], runs[-1]
    marginal = [round(1000 * (b["job1_s"] - a["job1_s"]) / (b["clips"] - a["clips"]), 2)
                for a, b in zip(runs, runs[1:], strict=False)]
    return {
        "ms_per_clip_largest_over_smallest": round(big["job1_ms_per_clip"] / small["job1_ms_per_clip"], 2),
        "marginal_ms_per_clip": marginal,
        "marginal_ms_per_clip_last_over_first": round(marginal[-1] / marginal[0], 2),
        "driver_rss_growth_kb_per_clip": [round(1024 * (b["driver_peak_rss_mb"] - a["driver_peak_rss_mb"])
                                                / (b["clips"] - a["clips"]), 1) for a, b in zip(runs, runs[1:], strict=False)],
        "driver_rss_largest_over_smallest": round(big["driver_peak_rss_mb"] / small["driver_peak_rss_mb"], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="300,1200,4800")
    ap.add_argument("--seconds", type=float, default=1.0, help="clip length for synth (default 1)")
    ap.add_argument("--out", default=str(report_path(__file__)))
    ap.add_argument("--compare-with", default=None, help="a source tree of another commit (git archive): its "
                    "driver's peak RSS on the largest size, for a before/after")
    a = ap.parse_args()
    sizes = sorted(int(x) for x in a.sizes.split(","))
    report: dict = {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()[0], "synth_seconds": a.seconds,
                    "shard_size": 64, "frame_size": 224}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        synthesize(tmp / "synth", clips=sizes[-1], seed=0, seconds=a.seconds, workers=2, progress=False)
        report["synth_s"] = round(time.perf_counter() - t0, 1)
        print(f"synth {sizes[-1]} clips: {report['synth_s']} s", flush=True)
        runs = []
        for n in sizes:
            runs.append(run_build(subset(tmp / "synth", n, tmp / f"sub{n}"), tmp / f"out{n}", 2))
            print(runs[-1], flush=True)
        report["sizes"] = runs
        mid = sizes[len(sizes) // 2]
        one = run_build(tmp / f"sub{mid}", tmp / f"out{mid}-1w", 1)
        print(one, flush=True)
        two = runs[sizes.index(mid)]
        report["workers"] = {"one": one, "two": two, "speedup_2_over_1": round(one["job1_s"] / two["job1_s"], 2)}
        if a.compare_with:
            other = driver(tmp / f"sub{sizes[-1]}", tmp / "out-other", 2, Path(a.compare_with).resolve())
            report["compare_with"] = {"source": a.compare_with, "clips": sizes[-1],
                                      "driver_peak_rss_mb": round(other["maxrss_mb"], 1),
                                      "elapsed_s": other["summary"]["elapsed_s"]}
            print(report["compare_with"], flush=True)
        report["ratios"] = ratios(runs)
    report["load_avg_at_end"] = os.getloadavg()[0]
    write_report(a.out, report, echo=True)


if __name__ == "__main__":
    main()
