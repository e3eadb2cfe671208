"""Dress rehearsal at MSR-VTT size (issue 22): what a first real run costs, measured on this machine.

MSR-VTT is 10,000 clips of 10-30 s (6,513 train / 497 val / 2,990 test), 20 captions each, a real
vocabulary. This builds a dataset of that shape and runs the system over it at nested sizes
(1,000 / 3,000 / 10,000 clips by default, each split in MSR-VTT's proportions):

  data      --distinct videos (default 500) of 10-30 s at 320x240, 30 fps, H.264 (libx264 ultrafast,
            x264's default keyframe placement), drawn by ffmpeg's testsrc2 generator with a seeded
            hue and length each; clip i links (hard link) video i mod --distinct. Why not `pipeline
            synth`: rendering 10,000 such clips with it is 1-3 h here, and job 1's cost depends on
            the container, codec, frame size, length and keyframes, not on what the pixels show.
            Captions: real English, 20 per clip from MSVD's (../shared/data/captions/msvd: 1,970
            clips, ~80k sentences): the clips are dealt MSVD clips in a seeded order, each gets 20
            of its MSVD clip's sentences (all of them when it has fewer, topped up at random), so a
            clip's references describe one video, as MSR-VTT's do, and 10,000 clips reuse each MSVD
            clip ~5 times.
  build     `pipeline build --dataset msrvtt --size 224` in a fresh process per size: time per job,
            clips/s, peak RSS of the driver and of the whole process tree (Dask workers and decoder
            subprocesses, sampled every 0.2 s); against it, bare decode (decord open + the 5 frames
            + resize + JPEG, one process, the per-core floor) on --bare-clips clips.
  train     per preset (paper: IRv2 random-initialised at 224, hidden 1000, the paper's batch
            sizes 64 / 256 / 16; cpu-small: the demo's) and stage: the Trainer's set-up (reading the
            build, the references, the CIDEr-D reward), CNN features per clip (the frozen stages
            cache them once), and --steps optimiser steps (the first left out as warm-up), peak RSS
            of each stage, and a cProfile of the steps. The frozen stages train on the features of
            --feature-clips clips, repeated to fill a batch: a step's cost does not depend on which
            clip it sees.
  eval      `train eval` of a cpu-small checkpoint (stage 1 after its --steps) on the whole test
            split with METEOR and beam 3, profiled: CNN, decoding, scoring, gallery.

The report: each cost at each size, its growth exponent over the sizes (the slope of log cost
against log clips: 1 is linear, a cost per clip > 1 grows faster than the data), and a log-log plot.

Usage: python -m bench.experiments.rehearsal [--work /tmp/rehearsal] [--sizes 1000,3000,10000] [--parts data,build,train,eval]
       [--train-sizes 1000,10000] [--eval-sizes 1000,10000] [--steps 3] [--out bench/experiments/rehearsal_report.json]
Re-runs reuse the work folder's videos and finished builds (delete a size's folder to measure it again).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from bench.common import REPO, SHARED, report_path, write_report
from vidcap.atomic import write_bytes_atomic, write_json_atomic

MSRVTT_SPLITS = (("train", 6513), ("val", 497), ("test", 2990))  # of 10,000 clips
MSVD = SHARED / "data" / "captions" / "msvd"
CAPTIONS_PER_CLIP = 20
# (name, preset, overrides) trained at each --train-sizes build (cpu-small) or --paper-sizes build (all)
VARIANTS = (("cpu-small", "cpu-small", []),
            ("cpu-small + Lite2", "cpu-small", ["model.backbone=tf_efficientnet_lite2"]),
            ("paper", "paper", ["model.pretrained=false"]))  # no registry has IRv2's weights: cost only
FPS, WIDTH, HEIGHT = 30, 320, 240


# ---- data -------------------------------------------------------------------------------------

def render_videos(out: Path, n: int, seed: int, workers: int = 2) -> list[Path]:
    """n H.264 clips of 10-30 s (seeded length and hue) by ffmpeg's testsrc2, `workers` encoders at once."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    specs = [(out / f"base{i:05d}.mp4", round(rng.uniform(10, 30), 2), rng.randrange(360)) for i in range(n)]

    def one(spec: tuple[Path, float, int]) -> Path:
        path, seconds, hue = spec
        if not path.exists():
            tmp = path.with_suffix(".tmp.mp4")
            subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                            f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}:duration={seconds},hue=h={hue}",
                            "-c:v", "libx264", "-preset", "ultrafast", "-threads", "1", "-pix_fmt", "yuv420p",
                            str(tmp)], check=True)
            tmp.rename(path)
        return path

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, specs))


def msvd_caption_sets(folder: Path = MSVD) -> list[list[str]]:
    """Every MSVD clip's captions (train, val and test files), in file order."""
    sets = []
    for name in ("msvd_train.json", "msvd_val.json", "msvd_test.json"):
        for entry in json.loads((folder / name).read_text()):
            caps = [c for c in entry[2] if isinstance(c, str) and c.strip()]
            if caps:
                sets.append(caps)
    if not sets:
        raise SystemExit(f"{folder}: no MSVD captions")
    return sets


def assign(n_clips: int, sets: list[list[str]], seed: int) -> list[list[str]]:
    """20 captions per clip: clip i gets MSVD clip order[i mod len] (a seeded order), 20 of its sentences."""
    rng = random.Random(seed)
    order = list(range(len(sets)))
    rng.shuffle(order)
    out = []
    for i in range(n_clips):
        caps = sets[order[i % len(order)]]
        if len(caps) >= CAPTIONS_PER_CLIP:
            out.append(rng.sample(caps, CAPTIONS_PER_CLIP))
        else:
            out.append(caps + rng.choices(caps, k=CAPTIONS_PER_CLIP - len(caps)))
    return out


def split_of(n: int) -> list[tuple[int, str]]:
    """(clip index, split) of an n-clip build in MSR-VTT's proportions, nested: each split's clips are
    the first ones of that split in the 10,000-clip layout (train 0-6512, val 6513-7009, test 7010-9999)."""
    out, start = [], 0
    for split, full in MSRVTT_SPLITS:
        out += [(start + i, split) for i in range(round(full * n / 10000))]
        start += full
    return out


def make_root(root: Path, n: int, videos: list[Path], captions: list[list[str]]) -> Path:
    """An MSR-VTT layout of n clips: videodatainfo.json and videos/video{i}.mp4 (hard links)."""
    if (root / "videodatainfo.json").exists():
        return root
    (root / "videos").mkdir(parents=True, exist_ok=True)
    entries, sentences = [], []
    for i, split in split_of(n):
        vid = f"video{i}"
        dst = root / "videos" / f"{vid}.mp4"
        if not dst.exists():
            os.link(videos[i % len(videos)], dst)
        entries.append({"video_id": vid, "split": split})
        sentences += [{"video_id": vid, "caption": c} for c in captions[i]]
    write_json_atomic(root / "videodatainfo.json", {"videos": entries, "sentences": sentences})
    return root


# ---- measuring a process tree -------------------------------------------------------------------

def _tree_rss_mb(pid: int) -> float:
    """Summed RSS of pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d))
            rss[int(d)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total / 2**20


def run_measured(cmd: list[str], log: Path, result: Path | None = None) -> tuple[dict | None, float, float, int]:
    """Run cmd; (its result, wall seconds, peak tree RSS in MB, exit status). The result is the JSON
    of `result` (a file the child writes) or else of its last stdout line; None when it wrote none
    (killed: the kernel's OOM killer sends no message). A child's stdout is a file, not a pipe, so
    DataLoader workers left behind by a killed child cannot hold the driver up."""
    t0 = time.perf_counter()
    out_path = log.with_suffix(".out")
    with open(log, "w") as err, open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=REPO, start_new_session=True)
        peak, done = [0.0], threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], _tree_rss_mb(proc.pid))

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        proc.wait()
        done.set()
        t.join()
    if proc.returncode:  # what it left behind (orphaned loader workers) goes with it
        subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)
    text = result.read_text() if result is not None and result.exists() else out_path.read_text()
    lines = text.strip().splitlines()
    try:
        res = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        res = None
    return res, time.perf_counter() - t0, peak[0], proc.returncode


def peak_rss_mb() -> float:
    """This process's peak RSS since the last reset_peak() (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS


def top_functions(prof: cProfile.Profile, n: int = 8) -> list[dict]:
    """The n functions with the most own time: where the time goes."""
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:n]
    return [{"function": f"{Path(k[0]).name}:{k[1]}({k[2]})", "own_s": round(v[2], 3), "cum_s": round(v[3], 3)}
            for k, v in rows]


def cumulative(prof: cProfile.Profile, names: dict[str, str]) -> dict[str, float]:
    """Cumulative seconds of the functions named {label: 'file.py:function'} (largest match)."""
    st = pstats.Stats(prof, stream=io.StringIO())
    out = {}
    for lab, spec in names.items():
        file, func = spec.split(":")
        out[lab] = round(max((v[3] for k, v in st.stats.items() if k[0].endswith(file) and k[2] == func),
                             default=0.0), 3)
    return out


# ---- the children: each measurement in a fresh process --------------------------------------------

BUILD_CHILD = """
import json, resource, sys
from vidcap.pipeline.build import BuildConfig, build
s = build(BuildConfig(**json.loads(sys.argv[1])))
print(json.dumps({"summary": s, "driver_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bare_decode(videos: list[Path], size: int) -> dict:
    """pipeline.frames' sampler (the 5 segment-centre frames, resized) + JPEG q90 in one process -- job 1's
    work without its subprocess, tar and Dask: the per-core floor."""
    from vidcap.pipeline.frames import encode_jpeg, sample_frames

    t0 = time.perf_counter()
    for v in videos:
        for f in sample_frames(v, 5, size).frames:
            encode_jpeg(f, 90)
    s = time.perf_counter() - t0
    return {"clips": len(videos), "seconds": round(s, 2), "ms_per_clip": round(1000 * s / len(videos), 1)}


def train_child(spec: dict) -> dict:
    """Stages 1-3 of one preset on one build: set-up, features, steps, peak RSS, profile."""
    import torch

    from vidcap.allocator import keep_freed_memory
    from vidcap.train.config import make_train_config
    from vidcap.train.features import FeatureSet, cached_features
    from vidcap.train.loop import Trainer, make_batches
    from vidcap.train.resume import Position
    from vidcap.train.run_folder import BEST

    keep_freed_memory()
    torch.set_num_threads(spec["threads"])
    feature_clips = spec["feature_clips"]

    class BoundedTrainer(Trainer):
        """A Trainer whose frozen-CNN features cover the first `feature_clips` clips of a split."""

        def features(self, split: str) -> FeatureSet:
            if split not in self.cache:
                t0 = time.perf_counter()
                fs = cached_features(self.model, self.info, split, self.image_size, self.run.features,
                                     lambda r, w: make_batches(replace(self.cfg, max_clips=feature_clips), self.info,
                                                               split, self.image_size, False, batch_size=32, rank=r,
                                                               world=w),
                                     self.dist, feature_clips, False)
                self.feature_seconds = getattr(self, "feature_seconds", {})
                self.feature_seconds[split] = (time.perf_counter() - t0, len(fs.clip_ids))
                reps = -(-self.cfg.batch_size // len(fs.clip_ids))
                self.cache[split] = FeatureSet(fs.clip_ids * reps, fs.feats.repeat(reps, 1, 1), fs.captions * reps,
                                               fs.attrs.repeat(reps, 1))
            return self.cache[split]

    rows = []
    for stage in spec.get("stages", (1, 2, 3)):
        reset_peak()
        t0 = time.perf_counter()
        cfg = make_train_config(stage, spec["preset"], [*spec["overrides"], "seed=0", "save_every=0"],
                                data=spec["data"], run=spec["run"])
        tr = BoundedTrainer(cfg, progress=False)
        setup_s = time.perf_counter() - t0
        in_setup = sum(v[0] for v in getattr(tr, "feature_seconds", {}).values())  # feature_norm's statistics
        feats = dict(getattr(tr, "feature_seconds", {}))
        times, prof = [], cProfile.Profile()
        batches = iter(tr.epoch_batches(0))
        for i in range(spec["steps"] + 1):
            batch = next(batches, None)
            if batch is None:
                batches = iter(tr.epoch_batches(i))
                batch = next(batches)
            t1 = time.perf_counter()
            if i:
                prof.enable()
            tr.step(batch, 0)
            if i:
                prof.disable()
                times.append(time.perf_counter() - t1)
        feats.update(getattr(tr, "feature_seconds", {}))
        tr.save(BEST, Position())  # the next stage starts from it
        tr.close()
        ft = feats.get("train")
        rows.append({"preset": spec["name"], "stage": stage, "batch_size": cfg.batch_size,
                     "samples": cfg.samples if cfg.rl_weight else None, "train_cnn": cfg.train_cnn,
                     "setup_s": round(setup_s - in_setup, 2),
                     "feature_s_per_clip": round(ft[0] / ft[1], 4) if ft else None,
                     "step_s": round(sum(times) / len(times), 3), "steps": len(times),
                     "s_per_1000_clips": round(1000 * sum(times) / len(times) / cfg.batch_size
                                               + (1000 * ft[0] / ft[1] if ft else 0), 1),
                     "peak_rss_mb": round(peak_rss_mb(), 1), "vocab": len(tr.info.itos),
                     "params_m": round(sum(p.numel() for p in tr.model.parameters()) / 1e6, 2),
                     "profile": top_functions(prof)})
        with open(spec["rows_file"], "a") as f:  # kept if a later stage is killed
            f.write(json.dumps(rows[-1]) + "\n")
    return {"rows": rows}


def features_child(spec: dict) -> dict:
    """Seconds per clip of each variant's frozen-CNN features (frame_features, no grad) on --feature-clips
    clips of the train split, after one warm-up batch: what stages 1-2 pay once per clip."""
    import torch

    from vidcap.allocator import keep_freed_memory
    from vidcap.model.registry import create_model, make_config
    from vidcap.shards.layout import DataInfo
    from vidcap.train.config import make_train_config
    from vidcap.train.data import SplitStream, torch_loader

    keep_freed_memory()
    torch.set_num_threads(spec["threads"])
    info = DataInfo.load(spec["data"])
    out = {}
    for name, preset, overrides in VARIANTS:
        cfg = make_train_config(1, preset, overrides)
        model = create_model(make_config(preset, len(info.itos), **cfg.model_overrides)).eval()
        batches = torch_loader(SplitStream(info, "train", max_clips=spec["feature_clips"] + 16),
                               model.cfg.image_size, 16, 0)
        seconds, clips = 0.0, 0
        with torch.no_grad():
            for i, batch in enumerate(batches):
                t0 = time.perf_counter()
                model.frame_features(batch["frames"])
                if i:  # the first batch warms up
                    seconds, clips = seconds + time.perf_counter() - t0, clips + len(batch["clip_id"])
        out[name] = {"clips": clips, "s_per_clip": round(seconds / clips, 4), "image_size": model.cfg.image_size}
    return out


def eval_child(spec: dict) -> dict:
    """`train eval` of a checkpoint on the test split (METEOR, beam 3), profiled."""
    import torch

    from vidcap.allocator import keep_freed_memory
    from vidcap.train.evaluate import evaluate_checkpoint

    keep_freed_memory()
    torch.set_num_threads(spec["threads"])
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    r = evaluate_checkpoint(spec["ckpt"], spec["data"], "test", beam=3, out=spec["out"], meteor=True)
    prof.disable()
    parts = cumulative(prof, {"cnn": "base.py:frame_features", "decode": "decoding.py:decode",
                              "score": "coco.py:score", "meteor": "meteor.py:compute_score",
                              "gallery": "report.py:gallery", "attributes": "grounding.py:attribute_map"})
    return {"clips": r["clips"], "seconds": round(time.perf_counter() - t0, 2), "parts_s": parts,
            "peak_rss_mb": round(peak_rss_mb(), 1), "CIDEr": r["metrics"].get("CIDEr"),
            "profile": top_functions(prof)}


# ---- the report ----------------------------------------------------------------------------------

def exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (None with fewer than two usable points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return round(sum((p[0] - mx) * (p[1] - my) for p in pts) / den, 3) if den else None


def growth(report: dict) -> list[dict]:
    """Each measured cost over the sizes where it was measured, with its growth exponent."""
    series: dict[str, dict[int, float]] = {}
    for b in report.get("builds", []):
        n = b["clips"]
        for k, v in b["job_seconds"].items():
            series.setdefault(f"build: {k} s", {})[n] = v
        series.setdefault("build: driver peak RSS MB", {})[n] = b["driver_rss_mb"]
        series.setdefault("build: tree peak RSS MB", {})[n] = b["tree_rss_mb"]
        series.setdefault("build: vocabulary words", {})[n] = b["vocab"]
    for t in report.get("train", []):
        for r in (r for r in t["rows"] if "failed" not in r):
            key = f"train {r['preset']} stage {r['stage']}"
            series.setdefault(f"{key}: set-up s", {})[t["clips"]] = r["setup_s"]
            series.setdefault(f"{key}: step s", {})[t["clips"]] = r["step_s"]
            series.setdefault(f"{key}: peak RSS MB", {})[t["clips"]] = r["peak_rss_mb"]
    for e in report.get("eval", []):
        series.setdefault("eval: total s", {})[e["build_clips"]] = e["seconds"]
        for k, v in e["parts_s"].items():
            series.setdefault(f"eval: {k} s", {})[e["build_clips"]] = v
        series.setdefault("eval: peak RSS MB", {})[e["build_clips"]] = e["peak_rss_mb"]
    out = []
    for name, pts in series.items():
        xs = sorted(pts)
        out.append({"cost": name, "clips": xs, "values": [pts[x] for x in xs],
                    "exponent": exponent(xs, [pts[x] for x in xs])})
    return out


def projection(report: dict) -> list[dict]:
    """Wall time of each preset's whole recipe on MSR-VTT (6,513 train / 497 val clips) on this machine,
    from the largest build's measured rows: the frozen stages pay the features of train + val once
    (stage 2 reuses stage 1's cache) and steps per epoch; stage 3 pays its steps and, each epoch, the
    CNN over the val clips. Left out: the val decoding and scoring of each epoch (a few seconds per
    epoch on cached features) and the test evaluation (its own row)."""
    from vidcap.train.config import SCHEDULES
    from vidcap.train.recipes import RECIPES, STAGES

    if not report.get("train"):
        return []
    train_n, val_n = MSRVTT_SPLITS[0][1], MSRVTT_SPLITS[1][1]
    rows = report["train"][-1]["rows"]
    out = []
    for name in dict.fromkeys(r["preset"] for r in rows):
        preset = "paper" if name == "paper" else "cpu-small"
        by_stage = {r["stage"]: r for r in rows if r["preset"] == name and "failed" not in r}
        if 1 not in by_stage:
            continue
        computed = report.get("features", {}).get(name, {}).get("s_per_clip")  # else the row's (maybe a cache read)
        feature_s = computed or by_stage[1]["feature_s_per_clip"]
        entry = {"preset": name, "feature_s_per_clip": feature_s, "stages": {}}
        for stage, r in sorted(by_stage.items()):
            sched = SCHEDULES[preset][RECIPES[STAGES[stage]].schedule]
            steps = sched["epochs"] * -(-train_n // sched["batch_size"])
            secs = steps * r["step_s"]
            if stage == 1:
                secs += feature_s * (train_n + val_n)
            if stage == 3:
                secs += sched["epochs"] * val_n * feature_s
            entry["stages"][stage] = {"epochs": sched["epochs"], "steps": steps, "hours": round(secs / 3600, 2)}
        entry["hours"] = round(sum(v["hours"] for v in entry["stages"].values()), 1)
        entry["complete"] = len(entry["stages"]) == 3
        out.append(entry)
    return out


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [g for g in report["growth"] if len(g["clips"]) >= 2 and all(v for v in g["values"])
            and (g["cost"].endswith(" s") and g["cost"].startswith(("build", "eval")))]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for g in rows:
        ax.loglog(g["clips"], g["values"], "o-", label=f"{g['cost']} (exp {g['exponent']})")
    if rows:
        x0, x1 = min(min(g["clips"]) for g in rows), max(max(g["clips"]) for g in rows)
        y0 = min(min(g["values"]) for g in rows)
        ax.loglog([x0, x1], [y0, y0 * x1 / x0], "k--", lw=0.8, label="linear (exponent 1)")
    ax.set_xlabel("clips in the build")
    ax.set_ylabel("seconds")
    ax.set_title("MSR-VTT-sized rehearsal: cost against clips (2 CPU cores)")
    if rows:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110)
    write_bytes_atomic(png, buf.getvalue())


def format_markdown(report: dict) -> str:
    lines = ["# MSR-VTT-sized rehearsal", "",
             f"{report['machine']}. Data: {report['data']}", ""]
    if report.get("builds"):
        lines += ["## pipeline build (224 px, 5 frames, 2 Dask workers)", "",
                  "| clips | captions | vocab | read s | job 1 s | job 1 clips/s | job 2 s | job 3 s | total s | "
                  "driver RSS MB | tree RSS MB |", "|" + "---|" * 11]
        for b in report["builds"]:
            j = b["job_seconds"]
            lines.append(f"| {b['clips']} | {b['captions']} | {b['vocab']} | {j.get('read', 0):.1f} | "
                         f"{j.get('shards', 0):.1f} | {b['clips'] / max(j.get('shards', 1e-9), 1e-9):.1f} | "
                         f"{j.get('attributes', 0):.1f} | {j.get('df_vocab', 0):.1f} | {b['wall_s']:.1f} | "
                         f"{b['driver_rss_mb']:.0f} | {b['tree_rss_mb']:.0f} |")
        if report.get("bare"):
            bare = report["bare"]
            lines += ["", f"Bare decode (one process): {bare['ms_per_clip']} ms per clip over {bare['clips']} clips; "
                      f"job 1 at {report['builds'][-1]['clips']} clips: {report['job1_ms_per_clip_per_worker']} ms "
                      f"per clip per worker ({report['job1_over_bare']}x bare)."]
    for t in report.get("train", []):
        lines += ["", f"## Training steps, build of {t['clips']} clips", "",
                  "| preset | stage | batch | M | CNN | set-up s | features s/clip | step s | s per 1,000 clips | "
                  "peak RSS MB | params M | vocab |", "|" + "---|" * 12]
        for r in t["rows"]:
            if "failed" in r:
                lines.append(f"| {r['preset']} | {r['stage']} | {r['failed']}; the process tree held "
                             f"{r['peak_tree_rss_mb']:.0f} MB at its peak |" + " |" * 10)
                continue
            lines.append(f"| {r['preset']} | {r['stage']} | {r['batch_size']} | {r['samples'] or '—'} | "
                         f"{'trained' if r['train_cnn'] else 'frozen'} | {r['setup_s']} | "
                         f"{r['feature_s_per_clip'] or '—'} | {r['step_s']} | {r['s_per_1000_clips']} | "
                         f"{r['peak_rss_mb']:.0f} | {r['params_m']} | {r['vocab']} |")
    for e in report.get("eval", []):
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in e["parts_s"].items())
        lines += ["", f"## train eval, {e['clips']} test clips of the {e['build_clips']}-clip build "
                  f"(cpu-small, beam 3, METEOR)", "",
                  f"{e['seconds']:.1f} s ({1000 * e['seconds'] / e['clips']:.0f} ms per clip), peak RSS "
                  f"{e['peak_rss_mb']:.0f} MB; {parts}."]
    if report.get("features"):
        f = report["features"]
        lines += ["", f"## CNN features per clip (frozen, no grad; train clips of the {f['build_clips']}-clip build)",
                  "", "| variant | px | s per clip |", "|---|---|---|"]
        lines += [f"| {k} | {v['image_size']} | {v['s_per_clip']} |" for k, v in f.items() if isinstance(v, dict)]
    if report.get("projection"):
        lines += ["", "## Projected: each preset's whole recipe on MSR-VTT on this machine "
                  "(6,513 train / 497 val clips; assumptions in `projection`'s docstring)", "",
                  "| preset | stage 1 h | stage 2 h | stage 3 h | total h |", "|---|---|---|---|---|"]
        for e in report["projection"]:
            st = e["stages"]
            lines.append(f"| {e['preset']} | " + " | ".join(
                f"{st[k]['hours']} ({st[k]['epochs']} ep, {st[k]['steps']} steps)" if k in st else "not measured"
                for k in (1, 2, 3)) + f" | {e['hours']}{'' if e.get('complete') else ' (stages measured only)'} |")
    lines += ["", "## Growth with the clip count (exponent of a log-log fit; 1 = linear)", "",
              "| cost | clips | values | exponent |", "|---|---|---|---|"]
    for g in report["growth"]:
        lines.append(f"| {g['cost']} | {', '.join(map(str, g['clips']))} | "
                     f"{', '.join(f'{v:g}' for v in g['values'])} | {g['exponent'] if g['exponent'] is not None else '—'} |")
    return "\n".join(lines) + "\n"


# ---- the driver ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/rehearsal")
    p.add_argument("--sizes", default="1000,3000,10000", help="nested build sizes (clips)")
    p.add_argument("--parts", default="data,build,train,eval")
    p.add_argument("--train-sizes", default=None, help="builds to train on (default: smallest and largest)")
    p.add_argument("--paper-sizes", default=None, help="builds to run the paper preset and Lite2 on (default: largest)")
    p.add_argument("--paper-stages", default="1,2,3",
                   help="the paper preset's stages (its stage 3 needs more than 24 GB of RAM on a CPU)")
    p.add_argument("--eval-sizes", default=None, help="builds to evaluate on (default: smallest and largest)")
    p.add_argument("--distinct", type=int, default=500, help="distinct videos the clips link to")
    p.add_argument("--bare-clips", type=int, default=100)
    p.add_argument("--steps", type=int, default=3, help="measured optimiser steps per stage (after one warm-up)")
    p.add_argument("--feature-clips", type=int, default=64, help="clips whose features the frozen stages train on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(report_path(__file__)))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:  # a measurement in its own process: JSON in, JSON on the last stdout line
        spec = json.loads(a.child)
        child = {"train": train_child, "eval": eval_child, "features": features_child}[spec["kind"]]
        print(json.dumps(child(spec)))
        return {}
    sizes = sorted(int(x) for x in a.sizes.split(","))
    pick = lambda s, default: sorted(int(x) for x in s.split(",")) if s else default  # noqa: E731
    train_sizes = pick(a.train_sizes, sorted({sizes[0], sizes[-1]}))
    paper_sizes = pick(a.paper_sizes, [sizes[-1]])
    eval_sizes = pick(a.eval_sizes, sorted({sizes[0], sizes[-1]}))
    parts = set(a.parts.split(","))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(a.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    report.update({"machine": f"{os.cpu_count()} CPU cores, torch threads 2, commit {commit.strip() or '?'}",
                   "data": f"{max(sizes)} clips of 10-30 s at {WIDTH}x{HEIGHT}, {FPS} fps, linked to {a.distinct} "
                           f"distinct testsrc2 videos; {CAPTIONS_PER_CLIP} MSVD captions per clip (module docstring)",
                   "sizes": sizes})

    def save() -> None:
        report["growth"] = growth(report)
        report["projection"] = projection(report)
        write_report(out, report, format_markdown(report))
        plot(report, out.with_suffix(".png"))

    if "data" in parts:
        t0 = time.perf_counter()
        missing = sum(not (work / "base" / f"base{i:05d}.mp4").exists() for i in range(a.distinct))
        videos = render_videos(work / "base", a.distinct, a.seed)
        if missing:
            report["render_s"] = {"videos": missing, "seconds": round(time.perf_counter() - t0, 1)}
        captions = assign(10000, msvd_caption_sets(), a.seed)
        for n in sizes:
            make_root(work / f"root{n}", n, videos, captions)
        print(f"data: {missing} of {a.distinct} videos rendered in {time.perf_counter() - t0:.1f} s", flush=True)
    if "build" in parts:
        builds = {b["clips"]: b for b in report.get("builds", [])}
        for n in sizes:
            cfg = {"dataset": "msrvtt", "root": str(work / f"root{n}"), "out": str(work / f"data{n}"),
                   "size": 224, "shard_size": 256, "workers": 2, "progress": False, "overwrite": True}
            res, wall, tree, rc = run_measured([sys.executable, "-c", BUILD_CHILD, json.dumps(cfg)],
                                               work / f"build{n}.log")
            if rc or res is None:
                raise SystemExit(f"build of {n} clips: exit {rc}; see {work / f'build{n}.log'}")
            s = res["summary"]
            builds[n] = {"clips": n, "captions": n * CAPTIONS_PER_CLIP, "vocab": s["cider_df"]["vocab"],
                         "job_seconds": s["job_seconds"], "wall_s": round(wall, 1),
                         "driver_rss_mb": round(res["driver_rss_mb"], 1), "tree_rss_mb": round(tree, 1),
                         "failures": s["failures_by_reason"], "summary_keys": {"attributes": s["attributes"],
                                                                              "cider_df": s["cider_df"]}}
            report["builds"] = [builds[k] for k in sorted(builds)]
            print(f"build {n}: {wall:.0f} s, jobs {s['job_seconds']}", flush=True)
            save()
        vids = sorted((work / "base").glob("base*.mp4"))[: a.bare_clips]
        report["bare"] = bare_decode(vids, 224)
        last = report["builds"][-1]
        per_worker = 1000 * last["job_seconds"]["shards"] * 2 / last["clips"]
        report["job1_ms_per_clip_per_worker"] = round(per_worker, 1)
        report["job1_over_bare"] = round(per_worker / report["bare"]["ms_per_clip"], 2)
        save()
    if "train" in parts:
        runs = {(t["clips"]): t for t in report.get("train", [])}
        for n in train_sizes:
            rows = []
            for name, preset, overrides in VARIANTS:
                if name != "cpu-small" and n not in paper_sizes:
                    continue
                slug = name.replace(" + ", "-").lower()
                spec = {"kind": "train", "preset": preset, "name": name, "data": str(work / f"data{n}"),
                        "run": str(work / f"run{n}-{slug}"), "steps": a.steps, "feature_clips": a.feature_clips,
                        "overrides": overrides, "threads": 2,
                        "stages": [int(x) for x in (a.paper_stages if preset == "paper" else "1,2,3").split(",")]}
                spec["rows_file"] = str(work / f"train{n}-{slug}.rows.jsonl")
                Path(spec["rows_file"]).unlink(missing_ok=True)
                _, wall, tree, rc = run_measured([sys.executable, "-m", "bench.experiments.rehearsal", "--child",
                                                  json.dumps(spec)], work / f"train{n}-{slug}.log")
                got = [json.loads(line) for line in Path(spec["rows_file"]).read_text().splitlines()] \
                    if Path(spec["rows_file"]).exists() else []
                rows += got
                if rc:  # the stage after the last measured one did not finish: say so, with what it held
                    rows.append({"preset": name, "stage": len(got) + 1, "failed": f"exit {rc}"
                                 + (" (killed: out of memory)" if rc in (-9, 137) else ""),
                                 "peak_tree_rss_mb": round(tree, 1)})
                print(f"train {n} {name}: {wall:.0f} s" + (f", exit {rc}" if rc else ""), flush=True)
            runs[n] = {"clips": n, "rows": rows}
            report["train"] = [runs[k] for k in sorted(runs)]
            save()
    if "features" in parts:  # the CNN's cost per clip, computed (the train rows may have read a cache)
        n = max(train_sizes)
        spec = {"kind": "features", "data": str(work / f"data{n}"), "feature_clips": a.feature_clips, "threads": 2}
        res, wall, _, rc = run_measured([sys.executable, "-m", "bench.experiments.rehearsal", "--child",
                                         json.dumps(spec)], work / "features.log")
        if rc or res is None:
            raise SystemExit(f"features: exit {rc}; see {work / 'features.log'}")
        report["features"] = {"build_clips": n, **res}
        print(f"features: {wall:.0f} s", flush=True)
        save()
    if "eval" in parts:
        from vidcap.train.recipes import STAGES
        from vidcap.train.run_folder import RunFolder

        evals = {e["build_clips"]: e for e in report.get("eval", [])}
        for n in eval_sizes:
            spec = {"kind": "eval", "ckpt": str(RunFolder(work / f"run{n}-cpu-small").stage(STAGES[1]).best),
                    "data": str(work / f"data{n}"), "out": str(work / f"eval{n}"), "threads": 2}
            res, wall, _, rc = run_measured([sys.executable, "-m", "bench.experiments.rehearsal", "--child",
                                             json.dumps(spec)], work / f"eval{n}.log")
            if rc or res is None:
                raise SystemExit(f"eval on the {n}-clip build: exit {rc}; see {work / f'eval{n}.log'}")
            evals[n] = {"build_clips": n, **res}
            report["eval"] = [evals[k] for k in sorted(evals)]
            print(f"eval {n}: {wall:.0f} s", flush=True)
            save()
    save()
    print(format_markdown(report))
    return report


if __name__ == "__main__":
    main()
