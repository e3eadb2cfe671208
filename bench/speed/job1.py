"""Benchmark: job 1 (frames -> shards) against the usual alternatives, in one run on one core.

Clips: 50 realistic ones (3-5 s, re-encoded with x264's default keyframe placement) cut from the
real videos in ../shared/data/videos; without ../shared, larger synthetic clips stand in.
Every method produces the same thing: 5 frames at segment centres, 224x224, JPEG q90.

  bare       decord open + get_batch(5) + 5 JPEG encodes, in one process (the floor per core)
  job1       pipeline.frames_job.build_shard over all clips in one process: the same work plus the
             decoder subprocess, tar writing and sha256 (job1 / bare = job 1's overhead)
  job1_dask  job 1 as `pipeline build` runs it: shard tasks (10 clips) on a 2-process LocalCluster
             (cluster start-up, ~3 s once per build, excluded)
  seek       one `ffmpeg -ss` process per frame (5 per clip)
  official   dump every frame to JPEG with ffmpeg, then pick 5 (resize + re-encode)
seek and official run ffmpeg with its default threading, i.e. on both cores, like job1_dask.

Usage: python -m bench.speed.job1 [--clips 50] [--out bench/speed/job1_report.json]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import SHARED, best_of, report_path, write_report
from vidcap.pipeline.frames import encode_jpeg, sample_frames, segment_centres
from vidcap.pipeline.frames_job import ShardTask, build_shard

SIZE, K = 224, 5


def make_clips(n: int, out: Path) -> list[Path]:
    shared = SHARED / "data" / "videos"
    sources = sorted(shared.glob("*.mp4")) if shared.is_dir() else []
    rng = np.random.default_rng(0)
    clips = []
    if not sources:
        from vidcap.pipeline.synth import synthesize

        synthesize(out / "synth", clips=n, seed=0, size=(480, 270), seconds=4.0, progress=False)
        return sorted((out / "synth" / "videos").glob("*.mp4"), key=lambda p: int(p.stem[5:]))
    for i in range(n):
        src = sources[i % len(sources)]
        dur = float(json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json",
                                               str(src)], capture_output=True, text=True).stdout)["format"]["duration"])
        length = float(rng.uniform(3.0, min(5.0, dur)))
        start = float(rng.uniform(0, max(0.0, dur - length)))
        dst = out / f"clip{i:03d}.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", f"{start:.3f}", "-i", str(src), "-t", f"{length:.3f}",
                        "-an", "-c:v", "libx264", "-preset", "veryfast", str(dst)], check=True)
        clips.append(dst)
    return clips


def bare(clips: list[Path]) -> None:
    for c in clips:
        s = sample_frames(c, K, SIZE)
        [encode_jpeg(f, 90) for f in s.frames]


def _tasks(clips: list[Path], per_shard: int) -> list[ShardTask]:
    rows = [{"clip_id": c.stem, "path": str(c), "captions": ["x"]} for c in clips]
    return [ShardTask(f"bench-{i:06d}", "train", rows[i : i + per_shard], K, SIZE, 90, 120.0)
            for i in range(0, len(rows), per_shard)]


def job1(clips: list[Path], tmp: Path) -> None:
    out = tempfile.mkdtemp(dir=tmp)  # a fresh directory: a complete shard would be skipped
    for task in _tasks(clips, len(clips)):
        build_shard(task, out)


def job1_dask(clips: list[Path], tmp: Path, client) -> None:
    out = tempfile.mkdtemp(dir=tmp)
    futures = [client.submit(build_shard, t, out, pure=False) for t in _tasks(clips, 10)]
    assert sum(f.result().samples for f in futures) == len(clips)


def _probe_frames(c: Path) -> tuple[int, float]:
    out = json.loads(subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
                                     "stream=nb_read_packets,avg_frame_rate", "-of", "json", str(c)],
                                    capture_output=True, text=True).stdout)["streams"][0]
    num, den = out["avg_frame_rate"].split("/")
    return int(out["nb_read_packets"]), float(num) / float(den)


def seek(clips: list[Path]) -> None:
    for c in clips:
        n, fps = _probe_frames(c)
        for i in segment_centres(n, K):
            jpg = subprocess.run(["ffmpeg", "-v", "error", "-ss", f"{i / fps:.4f}", "-i", str(c), "-frames:v", "1",
                                  "-s", f"{SIZE}x{SIZE}", "-q:v", "3", "-f", "image2pipe", "-c:v", "mjpeg", "pipe:"],
                                 capture_output=True, check=True).stdout
            assert jpg[:2] == b"\xff\xd8"


def official(clips: list[Path], tmp: Path) -> None:
    for c in clips:
        d = Path(tempfile.mkdtemp(dir=tmp))
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(c), "-q:v", "2", str(d / "%05d.jpg")], check=True)
        files = sorted(d.glob("*.jpg"))
        for i in segment_centres(len(files), K):
            img = Image.open(files[i]).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
            img.save(io.BytesIO(), format="JPEG", quality=90)


def timed(fn, *args, repeat: int = 1) -> float:
    return best_of(lambda: fn(*args), repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=50)
    ap.add_argument("--out", default=str(report_path(__file__)))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        clips = make_clips(a.clips, tmp)
        bare(clips[:3])  # warm the page cache and imports
        from vidcap.pipeline.cluster import dask_client

        res = {"bare": timed(bare, clips, repeat=2), "job1": timed(job1, clips, tmp, repeat=2)}
        with dask_client(workers=2) as client:
            job1_dask(clips[:4], tmp, client)  # warm the workers
            res["job1_dask"] = timed(job1_dask, clips, tmp, client, repeat=2)
        res["seek"] = timed(seek, clips)
        res["official"] = timed(official, clips, tmp)
    n = len(clips)
    report = {"clips": n, "seconds": {k: round(v, 3) for k, v in res.items()},
              "clips_per_s": {k: round(n / v, 2) for k, v in res.items()},
              "job1_dask_speedup_vs_official": round(res["official"] / res["job1_dask"], 2),
              "job1_dask_speedup_vs_seek": round(res["seek"] / res["job1_dask"], 2),
              "job1_over_bare_one_process": round(res["job1"] / res["bare"], 3)}
    write_report(a.out, report, echo=True)


if __name__ == "__main__":
    main()
