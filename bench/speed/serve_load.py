"""Benchmark: `caption serve` under load -- requests/s and p50 / p95 latency at 1, 4 and 16
concurrent clients.

A real server (`caption serve` in a subprocess on 127.0.0.1, a free port, its default --workers 2
--queue 16) and real HTTP: each client is a thread with its own keep-alive httpx connection that
uploads built-in clips (2 s, 160x120 H.264, rendered here) one after another for --seconds. Latency
is from sending a request to reading its reply (upload, decode, CNN, beam 3, five JPEG frames).
Client threads share the machine with the server (2 cores here), as they would on one box. A 503
(the service full) is counted, not timed; at 16 clients there should be none (2 + 16 >= 16).

The model: --model DIR (a model folder), or --ckpt CKPT (exported to a temporary folder first), or
else a tiny model trained here for one epoch (~20 s) -- the report says which.

Usage: python -m bench.speed.serve_load [--model DIR | --ckpt CKPT] [--seconds 15] [--out bench/speed/serve_load_report.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import report_path, tool, write_report
from vidcap.pipeline.synth import synthesize

LEVELS = (1, 4, 16)


def tiny_model(tmp: Path, clips: Path) -> Path:
    """Train the tiny preset for one epoch on a small built-in dataset and export it."""
    from vidcap.pipeline.build import BuildConfig, build
    from vidcap.train.run_folder import RunFolder

    build(BuildConfig(dataset="msrvtt", root=str(clips), out=str(tmp / "data"), size=64, shard_size=8, min_count=1,
                      progress=False))
    for argv in (["train", "--stage", "1", "--data", str(tmp / "data"), "--run", str(tmp / "run"), "--preset", "tiny",
                  "epochs=1", "num_workers=0", "--quiet"],
                 ["train", "export", "--ckpt", str(RunFolder(tmp / "run").stage("xe").best), "--out", str(tmp / "model"),
                  "--name", "tiny-1-epoch"]):
        subprocess.run([tool(argv[0]), *argv[1:]], check=True, stdout=subprocess.DEVNULL)
    return tmp / "model"


def level(url: str, clients: int, seconds: float, videos: list[bytes]) -> dict:
    """`clients` threads upload clips back to back for `seconds`; throughput and latency percentiles."""
    times: list[float] = []
    codes: dict[int, int] = {}
    lock, start = threading.Lock(), threading.Barrier(clients + 1)

    def client(i: int) -> None:
        with httpx.Client(timeout=120) as http:
            http.get(url + "/health")  # connect before the clock starts
            start.wait()
            end, n = time.monotonic() + seconds, i
            while time.monotonic() < end:
                t0 = time.perf_counter()
                r = http.post(url + "/caption", files={"file": ("clip.mp4", videos[n % len(videos)])})
                dt = time.perf_counter() - t0
                n += 1
                with lock:
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        times.append(dt)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0  # includes the requests in flight when the time was up
    ms = np.array(times) * 1000
    return {"clients": clients, "requests": len(times), "seconds": round(wall, 1),
            "requests_per_s": round(len(times) / wall, 2), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "status_codes": {str(k): v for k, v in sorted(codes.items())}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--model", help="model folder")
    which.add_argument("--ckpt", help="checkpoint, exported to a temporary model folder")
    ap.add_argument("--seconds", type=float, default=15.0, help="per level (default 15)")
    ap.add_argument("--out", default=str(report_path(__file__)))
    a = ap.parse_args(argv)
    load_at_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "synth", clips=24 if not (a.model or a.ckpt) else 8, seed=0, progress=False)
        videos = [p.read_bytes() for p in sorted((tmp / "synth" / "videos").glob("*.mp4"))[:8]]
        if a.model:
            model, which_model = Path(a.model), f"model folder {a.model}"
        elif a.ckpt:
            subprocess.run([tool("train"), "export", "--ckpt", a.ckpt, "--out", str(tmp / "model")], check=True,
                           stdout=subprocess.DEVNULL)
            model, which_model = tmp / "model", f"checkpoint {a.ckpt} (exported)"
        else:
            model, which_model = tiny_model(tmp, tmp / "synth"), "tiny preset, 1 epoch of stage 1, trained here"
        config = json.loads((model / "config.json").read_text())
        proc = subprocess.Popen([tool("caption"), "serve", "--model", str(model), "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, "TMPDIR": str(tmp)})
        try:
            url = re.search(r"on (http://127\.0\.0\.1:\d+)/", proc.stdout.readline()).group(1)
            for _ in range(600):
                try:
                    if httpx.get(url + "/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            level(url, 2, 3.0, videos)  # warm-up: decoders started, first batches through the CNN
            rows = []
            for n in LEVELS:
                rows.append(level(url, n, a.seconds, videos))
                print(rows[-1], flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    report = {"model": which_model, "architecture": config["architecture"], "backbone": config["model"]["backbone"],
              "image_size": config["preprocessing"]["image_size"], "beam": 3, "server": "--workers 2 --queue 16",
              "clip": "built-in, 2 s, 160x120 H.264", "cpus": os.cpu_count(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "seconds_per_level": a.seconds,
              "load_avg_at_start": load_at_start, "load_avg_at_end": os.getloadavg()[0], "levels": rows}
    write_report(a.out, report)
    print("| clients | requests/s | p50 (ms) | p95 (ms) | requests | 503s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['requests']} | "
              f"{r['status_codes'].get('503', 0)} |")
    return report


if __name__ == "__main__":
    main()
