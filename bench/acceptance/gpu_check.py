"""The GPU check: one prepared script that runs vidcap's GPU code paths and says which work.

Why a script, prepared beforehand: no session so far had a GPU, and a lent one comes for minutes
(15 of device time, start-up included). So everything is decided here -- sizes, tolerances, what is
compared with what -- and on the GPU it is one command, ``make gpu-check`` (about 3-5 minutes;
``--budget-s``, default 300, leaves room to rerun within a lease). ``--dry-run`` runs the same code
on the CPU at tiny sizes; ``make test`` runs it (tests/test_gpu_check.py), so it cannot rot.

Checks, each PASS / FAIL / SKIP with its seconds:

  1 environment    torch, CUDA, cuDNN, the GPU (name, memory, bf16), the driver, DALI
  2 data           the built-in dataset: ``pipeline synth`` + ``pipeline build`` into --work
                   (at the preset's frame size; reused when already there), or --data DIR
  3 dali_decode    the shards' JPEGs through the trainer's DALI loader (nvJPEG, device="mixed"; on
                   the CPU device_id=None) against the default loader's PIL decode of the same
                   samples: mean |diff| <= 2 levels, max <= 64; images/s of both
  4-6 stage1..3    a few steps of each stage through the real Trainer in fp32 and in bf16 autocast
                   (amp=true) from the same init, seed and batches: loss of each, their relative
                   difference (sum |l_bf16 - l_fp32| / sum |l_fp32| < 5%), steps/s, clips/s, peak
                   GPU memory. Dropout is off (model.dropout=0): with it, fp32 and bf16 kernels draw
                   different masks, and RL would sample other captions -- noise, not precision.
                   Stage 3 runs a third time, fp32 with the memory options (grad_checkpoint=true
                   accumulate=2, docs/training.md "Memory"): its first step's loss must be fp32's
                   (the same draws, the same sums) within 1e-3, and its peak memory confirms or
                   corrects the memory table's projection (docs/benchmarks.md).
  7 process_group  a 1-process group through train/distributed.py (NCCL on the GPU, gloo on the
                   CPU): all_reduce, broadcast and all_gather of known values
  8 dali_epoch     ``loader=dali`` end to end: one epoch of stage 1 streaming (feature_cache=false),
                   amp=true, with its validation and checkpoints (run_stage, as ``train`` does)

Exit status: 0 every check passed or was skipped; 1 a check failed (or the budget ran out: what
was not run is a FAIL that says so); 2 misconfigured (no CUDA without --dry-run, a bad override),
one line. The report, bench/acceptance/gpu_report.json and .md (never committed), is rewritten after every
check, so even a run cut short leaves what it found.

Usage: python -m bench.acceptance.gpu_check [--dry-run] [--data DIR] [--work DIR] [--out DIR] [--budget-s 300]
       [--preset paper] [--steps 5] [--clips 366] [key=value ...]
"""

from __future__ import annotations

import faulthandler
import gc
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.common import REPO
from vidcap.atomic import write_bytes_atomic, write_json_atomic
from vidcap.errors import ArgumentParser, UserError, cli_errors
from vidcap.jsonfile import read_json
from vidcap.model.checkpoint import save_checkpoint
from vidcap.model.registry import make_config
from vidcap.shards.layout import DataInfo
from vidcap.train import distributed, run_lock
from vidcap.train.config import SCHEDULES, TrainConfig, make_train_config
from vidcap.train.data import SplitStream, torch_loader
from vidcap.train.loop import Trainer, build_model, run_stage
from vidcap.train.recipes import RECIPES, STAGES
from vidcap.train.run_folder import StageFolder

PROG = "gpu_check"
DECODE_MEAN_TOL, DECODE_MAX_TOL = 2.0, 64  # JPEG decoders differ in IDCT and chroma upsampling
LOSS_RTOL = 0.05  # sum |bf16 - fp32| / sum |fp32| over the steps
LOSS_ATOL = 1e-3  # ... or a mean |difference| this small (an RL loss near 0 has no relative scale)
OPTIONS_RTOL = 1e-3  # stage 3 with the memory options against without: the first step's loss (rounding only)
MEMORY_OPTIONS = ["grad_checkpoint=true", "accumulate=2"]
HARD_STOP_AFTER_S = 120  # past the budget: dump every thread's stack and exit (a hung collective)
# 366 clips: 256 training clips (70%), whole batches of the paper's 64 / 256 / 16, and 37 for validation.
GPU_CLIPS, DRY_CLIPS = 366, 24
GPU_STEPS, DRY_STEPS = 5, 3
STATUSES = ("PASS", "FAIL", "SKIP")
ESCAPED_BAR = "\\|"  # a "|" inside a Markdown table cell


class Skip(Exception):
    """The check does not apply here; the message says why."""


class Failed(Exception):
    """The check ran and found a wrong result; the message names it."""


class OverBudget(BaseException):
    """The run's time budget ran out (SIGALRM) during a check. A BaseException, so that an
    `except Exception` in the code under test (or a library) cannot swallow the one alarm."""


@dataclass
class Check:
    n: int
    name: str
    status: str = "FAIL"
    seconds: float = 0.0
    detail: str = ""
    values: dict = field(default_factory=dict)


@dataclass
class Settings:
    dry_run: bool
    device: str  # "cuda" or "cpu"
    preset: str
    overrides: list[str]
    steps: int
    clips: int
    data: Path | None
    work: Path
    out: Path
    budget_s: float
    workers: int  # synth / build processes and DataLoader workers


@dataclass
class Context:
    """What the checks share: the settings, and what earlier checks produced (the data, the init)."""

    s: Settings
    t0: float = field(default_factory=time.perf_counter)
    data: Path | None = None
    info: DataInfo | None = None
    init: Path | None = None  # stage 2 and 3 start from this checkpoint

    def need_data(self) -> DataInfo:
        if self.info is None:
            raise Failed("no data: check 2 failed")
        return self.info


# ---- helpers ----------------------------------------------------------------------------------
def sync(device: str) -> None:
    """Wait for the GPU's queued work, so a timer measures it (a no-op on the CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def dali_version() -> str | None:
    try:
        import nvidia.dali as dali
    except ImportError:
        return None
    return str(dali.__version__)


def nccl_version() -> str | None:
    try:
        v = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def mib(n: float) -> float:
    return round(n / 2**20, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_image_size(preset: str, overrides: list[str]) -> int:
    """The frame side the preset's model reads (the build is made at it, so no loader resizes)."""
    cfg = make_train_config(1, preset, overrides)
    config = make_config(preset, 4, **cfg.model_overrides)
    return int(config.image_size or 224)


def train_config(ctx: Context, stage: int, run: Path, extra: list[str], init: Path | None = None,
                 dropout: bool = True) -> TrainConfig:
    """A stage's TrainConfig as `train` builds it: the preset (`dropout=False`: model.dropout=0), the
    user's key=value overrides, then what this check fixes (`extra`: amp, loader...). save_every=0:
    no step checkpoints."""
    s = ctx.s
    base = ["save_every=0", f"num_workers={0 if s.dry_run else s.workers}", *([] if dropout else ["model.dropout=0"])]
    return make_train_config(stage, s.preset, [*base, *s.overrides, *extra], data=str(ctx.data), run=str(run),
                             device=s.device, init=str(init) if init else None)


@contextmanager
def open_trainer(cfg: TrainConfig) -> Iterator[Trainer]:
    """A Trainer whose steps this script drives; afterwards its log, run lock and process group are
    let go as Trainer.fit's end does (fit also evaluates and saves, which a timing of steps must not)."""
    trainer = Trainer(cfg, progress=False)
    try:
        yield trainer
    finally:
        trainer.log.close()
        run_lock.release(trainer.dir)
        trainer.close()


# ---- the checks -------------------------------------------------------------------------------
def check_environment(ctx: Context, c: Check) -> str:
    """Versions first: when a later check fails on a GPU, these say which stack it failed on."""
    v = c.values
    v.update(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
             cuda_available=torch.cuda.is_available(), cudnn=torch.backends.cudnn.version()
             if torch.backends.cudnn.is_available() else None, dali=dali_version(), cpus=os.cpu_count())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        v.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                 gpus=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported(),
                 nccl=nccl_version())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            v["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            v["driver"] = None
    dali = f"DALI {v['dali']}" if v["dali"] else "DALI not installed"
    stack = f"torch {v['torch']}, CUDA {v['torch_cuda']}, cuDNN {v['cudnn']}, {dali}"
    if ctx.s.dry_run:
        raise Skip(f"dry run, the GPU is not checked: {stack}")
    if not v.get("bf16"):
        raise Failed(f"{v['gpu']} has no bf16 (compute capability {v['capability']}): amp=true cannot run; {stack}")
    if v["cudnn"] is None:
        raise Failed(f"cuDNN is not available to torch: {stack}")
    return f"{v['gpu']}, {v['gpu_memory_gib']} GiB, driver {v.get('driver')}; {stack}"


def check_data(ctx: Context, c: Check) -> str:
    """The built-in dataset through the pipeline's own Python entry points (as `pipeline synth` and
    `pipeline build` call them), at the preset's frame size; a rerun reuses a matching build."""
    s = ctx.s
    if s.data is not None:
        ctx.data = s.data
        how = f"read {s.data}"
    else:
        from vidcap.pipeline.build import BuildConfig, build
        from vidcap.pipeline.synth import synthesize

        size = model_image_size(s.preset, s.overrides)
        stamp = {"clips": s.clips, "size": size, "frames": 5, "seed": 0}
        data, stamp_file = s.work / "data", s.work / "data-stamp.json"
        reused = stamp_file.exists() and read_json(stamp_file, "stamp") == stamp and (data / "build.json").exists()
        if not reused:
            t = time.perf_counter()
            synthesize(s.work / "synth", clips=s.clips, seed=0, workers=s.workers, overwrite=True, progress=False)
            c.values["synth_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            build(BuildConfig(dataset="msrvtt", root=str(s.work / "synth"), out=str(data), frames=5, size=size,
                              shard_size=64, min_count=1, workers=s.workers, overwrite=True, progress=False))
            c.values["build_s"] = round(time.perf_counter() - t, 2)
            write_json_atomic(stamp_file, stamp)
        ctx.data = data
        how = (f"reused {data}" if reused else
               f"built {data} ({s.clips} clips: synth {c.values['synth_s']} s, build {c.values['build_s']} s)")
    info = DataInfo.load(ctx.data)
    counts = {split: len(info.metadata(split)) for split in ("train", "val", "test")}
    c.values.update(splits=counts, frames=info.n_frames, frame_size=info.frame_size, vocab=len(info.itos),
                    attributes=len(info.attributes))
    if not counts["train"] or not counts["val"]:
        raise Failed(f"{ctx.data}: {counts}: training needs train and val clips")
    ctx.info = info
    return f"{how}; {counts['train']}/{counts['val']}/{counts['test']} clips, {info.n_frames} frames at {info.frame_size} px"


def need_dali(s: Settings) -> None:
    """DALI missing: a SKIP in a dry run (CI need not install it), a FAIL on a GPU (it was asked for)."""
    if dali_version() is None:
        hint = "NVIDIA DALI is not installed (pip install 'vidcap[dali]')"
        raise Skip(hint) if s.dry_run else Failed(hint)


def check_dali_decode(ctx: Context, c: Check) -> str:
    """The decode the trainer's loader=dali does, sample by sample against the default loader's."""
    s, info = ctx.s, ctx.need_data()
    need_dali(s)
    from vidcap.train.dali_loader import DaliLoader

    size, bs = info.frame_size, 16
    workers = 0 if s.dry_run else s.workers
    ref: dict[str, torch.Tensor] = {}
    for _ in range(2):  # as DALI's below: the second pass is the rate (each pass starts its workers)
        t = time.perf_counter()
        frames = {cid: f for b in torch_loader(SplitStream(info, "train"), size, bs, workers)
                  for cid, f in zip(b["clip_id"], b["frames"], strict=True)}
        cpu_s = time.perf_counter() - t
        ref = ref or frames
    t = time.perf_counter()
    loader = DaliLoader(info, "train", size, bs, shuffle=False, device=s.device)
    build_s = time.perf_counter() - t
    got, passes = {}, []
    for _ in range(2):  # the first pass pays nvJPEG's and the pipeline's start; the second is the rate
        sync(s.device)
        t = time.perf_counter()
        frames = {cid: f.cpu() for b in loader for cid, f in zip(b["clip_id"], b["frames"], strict=True)}
        sync(s.device)
        passes.append(time.perf_counter() - t)
        got = got or frames
    images = len(ref) * info.n_frames
    v = c.values
    v.update(device="mixed" if s.device == "cuda" else "cpu", images=images, batch=bs, cpu_loader_workers=workers,
             cpu_images_per_s=round(images / cpu_s, 1), dali_build_s=round(build_s, 3),
             dali_first_pass_s=round(passes[0], 3), dali_images_per_s=round(images / passes[1], 1))
    if list(got) != list(ref):
        raise Failed(f"DALI gave clips {list(got)[:3]}... ({len(got)}), the default loader {list(ref)[:3]}... "
                     f"({len(ref)}): not the same samples in the same order")
    shapes = {tuple(f.shape) for f in got.values()} | {tuple(f.shape) for f in ref.values()}
    if len(shapes) != 1 or {f.dtype for f in got.values()} != {torch.uint8}:
        raise Failed(f"frame shapes {sorted(shapes)}, DALI dtypes {sorted({str(f.dtype) for f in got.values()})}")
    diff = torch.stack([(got[k].int() - ref[k].int()).abs() for k in ref])
    v.update(mean_abs_diff=round(diff.float().mean().item(), 4), max_abs_diff=int(diff.max()))
    line = (f"{v['device']}: mean |diff| {v['mean_abs_diff']:.3f}, max {v['max_abs_diff']} over {images} images; "
            f"DALI {v['dali_images_per_s']:.0f} images/s, PIL {v['cpu_images_per_s']:.0f}")
    if v["mean_abs_diff"] > DECODE_MEAN_TOL or v["max_abs_diff"] > DECODE_MAX_TOL:
        raise Failed(f"{line}: beyond the tolerance (mean {DECODE_MEAN_TOL}, max {DECODE_MAX_TOL})")
    return line


def run_steps(ctx: Context, stage: int, amp: bool, init: Path | None, resample: bool = False,
              options: list[str] | None = None) -> dict:
    """`steps` optimiser steps of `stage` through the Trainer (its data, feature cache, loss, step);
    the per-step statistics, and the rate and peak GPU memory of the steps after the first.
    `resample`: the same batches, but torch's RNG -- the RL samples' stream -- seeded differently.
    `options`: more key=value settings (the memory options)."""
    s = ctx.s
    run = s.work / "runs" / (f"stage{stage}-{'bf16' if amp else 'fp32'}{'-resampled' if resample else ''}"
                             + ("-options" if options else ""))
    shutil.rmtree(run, ignore_errors=True)
    cfg = train_config(ctx, stage, run, [f"amp={str(amp).lower()}", *(options or [])], init, dropout=False)
    if s.device == "cuda":
        gc.collect()  # the previous run's Trainer, so that its tensors leave this run's peak
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        # fp32 means fp32: cuDNN's convolutions and RNNs default to TF32 on Ampere and later
        torch.backends.cudnn.allow_tf32 = amp
        torch.backends.cuda.matmul.allow_tf32 = False
    t = time.perf_counter()
    with open_trainer(cfg) as trainer:
        setup_s = time.perf_counter() - t
        if resample:  # the batch order is the loader's (seeded by cfg.seed), not torch's global RNG
            torch.manual_seed(cfg.seed + 7919)
        steps: list[dict] = []
        clips, seconds = [], []
        epoch, batches = 0, iter(trainer.epoch_batches(0))
        for i in range(s.steps):
            if i == 1 and s.device == "cuda":  # the first step builds the feature cache and warms cuDNN
                torch.cuda.reset_peak_memory_stats()
            sync(s.device)
            t = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:  # a small training set: the next epoch's batches
                epoch += 1
                batches = iter(trainer.epoch_batches(epoch))
                batch = next(batches)
            steps.append(trainer.step(batch, epoch))
            sync(s.device)
            seconds.append(time.perf_counter() - t)
            clips.append(len(batch["clip_id"]))
        if stage == 1 and not amp and ctx.init is None:  # stages 2 and 3 start from these weights
            ctx.init = s.work / "runs" / "init-stage1.pt"
            save_checkpoint(ctx.init, trainer.model, trainer.info.itos, trainer.info.attributes)
    timed, n_clips = sum(seconds[1:]), sum(clips[1:])
    out = {key: [round(x[key], 6) for x in steps] for key in steps[0]}  # loss, and each term's
    out.update(batch_sizes=clips, setup_s=round(setup_s, 3), first_step_s=round(seconds[0], 3),
               steps_per_s=round((len(seconds) - 1) / timed, 3) if timed else None,
               clips_per_s=round(n_clips / timed, 2) if timed else None)
    if s.device == "cuda":
        out["peak_gpu_mib"] = mib(torch.cuda.max_memory_allocated())
        out["peak_gpu_reserved_mib"] = mib(torch.cuda.max_memory_reserved())
    return out


def rel_diff(a: list[float], b: list[float]) -> float:
    """sum |b - a| / sum |a|: over steps, so one step's loss near 0 does not make it unbounded."""
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / max(sum(abs(x) for x in a), 1e-12)


def init_checkpoint(ctx: Context) -> Path:
    """What stages 2 and 3 start from: stage 1's fp32 weights after its steps, or -- when that check
    failed -- a fresh model of the preset, so each stage's check stands on its own."""
    if ctx.init is None:
        ctx.init = ctx.s.work / "runs" / "init-fresh.pt"
        cfg = train_config(ctx, 1, ctx.s.work / "runs" / "init", [], dropout=False)
        model, _ = build_model(cfg, ctx.need_data())
        save_checkpoint(ctx.init, model, ctx.info.itos, ctx.info.attributes)
    return ctx.init


def check_stage(stage: int) -> Callable[[Context, Check], str]:
    def check(ctx: Context, c: Check) -> str:
        """fp32 then bf16 from the same init, seed and batches: bf16 must change the loss only by
        rounding. A REINFORCE loss is a sampled estimate, and bf16's slightly other probabilities
        draw some other captions, whose rewards move it by the estimate's own noise: so for RL
        stages a third run, fp32 with another sampling stream, measures that noise, and bf16 passes
        within twice it too. An attribute loss (stage 3) is no sample: at the first step (the same
        weights) it must agree within the tolerance, through the bf16 CNN."""
        ctx.need_data()
        recipe = RECIPES[STAGES[stage]]
        init = init_checkpoint(ctx) if stage > 1 else None
        fp32 = run_steps(ctx, stage, False, init)
        bf16 = run_steps(ctx, stage, True, init)
        a, b = fp32["loss"], bf16["loss"]
        rel, mean_abs = rel_diff(a, b), sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)
        v = c.values
        v.update(preset=ctx.s.preset, steps=ctx.s.steps, rtol=LOSS_RTOL, atol=LOSS_ATOL, loss_rel_diff=round(rel, 6),
                 loss_mean_abs_diff=round(mean_abs, 6), fp32=fp32, bf16=bf16)
        noise = None
        if recipe.rl:
            v["fp32_resampled"] = again = run_steps(ctx, stage, False, init, resample=True)
            v["sampling_noise_rel_diff"] = noise = round(rel_diff(a, again["loss"]), 6)
        mem = f"; peak {fp32['peak_gpu_mib']:.0f} / {bf16['peak_gpu_mib']:.0f} MiB" if ctx.s.device == "cuda" else ""
        line = (f"loss fp32 {sum(a) / len(a):.4f}, bf16 {sum(b) / len(b):.4f} (mean of {len(a)} steps; sum |diff| / "
                f"sum |fp32| {100 * rel:.2f}%" + (f", fp32 resampled {100 * noise:.2f}%" if noise is not None else "")
                + f"); {fp32['clips_per_s']} / {bf16['clips_per_s']} clips/s{mem}")
        if not all(math.isfinite(x) for x in a + b):
            raise Failed(f"a loss is not finite: fp32 {a}, bf16 {b}")
        if "attr_loss" in fp32:
            x, y = fp32["attr_loss"][0], bf16["attr_loss"][0]
            v["attr_loss_first_step_rel_diff"] = attr = round(abs(y - x) / max(abs(x), 1e-12), 6)
            if attr >= LOSS_RTOL:
                raise Failed(f"{line}: the first step's attribute loss, bf16 {y:.4f} vs fp32 {x:.4f}, is "
                             f"{100 * attr:.1f}% off (tolerance {100 * LOSS_RTOL:.0f}%)")
        if stage == 3:
            line += memory_options(ctx, init, fp32, v)
        if rel < LOSS_RTOL or mean_abs < LOSS_ATOL or (noise is not None and rel <= 2 * noise):
            return line
        raise Failed(f"{line}: bf16 is {100 * rel:.1f}% off fp32 (tolerance {100 * LOSS_RTOL:.0f}%"
                     + (f", or twice the sampling noise, {200 * noise:.1f}%" if noise is not None else "") + ")")

    check.__name__ = f"check_stage{stage}"
    return check


def memory_options(ctx: Context, init: Path, fp32: dict, v: dict) -> str:
    """Stage 3 again in fp32 with grad_checkpoint=true accumulate=2 (accumulate=1 at batch size 1): the
    first step has the same weights, batch and draws, so the same loss up to rounding; its peak memory
    against the plain run's. A part of the line, or Failed."""
    batch = train_config(ctx, 3, ctx.s.work / "runs" / "unused", []).batch_size
    options = MEMORY_OPTIONS if batch >= 2 else MEMORY_OPTIONS[:1]
    v["memory_options"] = options
    v["fp32_options"] = opt = run_steps(ctx, 3, False, init, options=options)
    x, y = fp32["loss"][0], opt["loss"][0]
    v["options_first_step_rel_diff"] = rel = round(abs(y - x) / max(abs(x), 1e-12), 6)
    mem = (f", peak {fp32['peak_gpu_mib']:.0f} -> {opt['peak_gpu_mib']:.0f} MiB"
           if ctx.s.device == "cuda" else "")
    if not (rel < OPTIONS_RTOL or abs(y - x) < LOSS_ATOL * 1e-2):
        raise Failed(f"with {' '.join(options)} the first step's loss is {y:.6f}, without {x:.6f}: "
                     f"{100 * rel:.3f}% off (tolerance {100 * OPTIONS_RTOL:.1f}%)")
    return f"; with {' '.join(options)}: first loss {y:.4f} ({100 * rel:.3f}% off){mem}, {opt['clips_per_s']} clips/s"


def check_process_group(ctx: Context, c: Check) -> str:
    """The trainer's own join (train/distributed.py) as torchrun would start rank 0 of 1, and the
    collectives the trainer uses, with values whose results are known."""
    import torch.distributed as dist

    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    d = None
    try:
        t = time.perf_counter()
        d = distributed.setup(ctx.s.device, timeout_s=60)
        c.values["init_s"] = round(time.perf_counter() - t, 3)
        backend = str(dist.get_backend())
        want = distributed.backend_for(d.device)
        c.values.update(backend=backend, device=str(d.device), world=dist.get_world_size())
        x = torch.arange(1, 5, dtype=torch.float32, device=d.device)
        dist.all_reduce(x)
        sums = d.sum([1.5, -2.0])
        box = d.broadcast({"rank": 0, "word": "ok"})
        gathered = d.gather("rank0")
        sync(ctx.s.device)
        c.values.update(all_reduce=x.tolist(), sum=sums, broadcast=box, gather=gathered)
        wrong = [name for name, ok in (("backend", backend == want), ("all_reduce", x.tolist() == [1, 2, 3, 4]),
                                       ("sum", sums == [1.5, -2.0]), ("broadcast", box == {"rank": 0, "word": "ok"}),
                                       ("gather", gathered == ["rank0"])) if not ok]
        if wrong:
            raise Failed(f"{', '.join(wrong)} wrong: {c.values}")
        return f"{backend} on {d.device}: all_reduce, sum, broadcast, all_gather of 1 rank correct"
    finally:
        if d is not None:
            d.close()
        for k, value in saved.items():
            if value is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = value


def check_dali_epoch(ctx: Context, c: Check) -> str:
    """loader=dali as a user runs it: one epoch of stage 1 decoding every step's frames through DALI
    (the feature cache off), bf16, then its validation pass and checkpoints."""
    s, info = ctx.s, ctx.need_data()
    need_dali(s)
    run = s.work / "runs" / "dali-epoch"
    shutil.rmtree(run, ignore_errors=True)
    cfg = train_config(ctx, 1, run, ["loader=dali", "feature_cache=false", "epochs=1", "eval_every=1", "amp=true"])
    if s.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = run_stage(cfg, progress=False)
    record = result["history"][-1]
    n_train = len(info.metadata("train")[: cfg.max_clips])
    want = -(-n_train // cfg.batch_size)
    c.values.update({k: record.get(k) for k in ("steps", "train_seconds", "clips_per_s", "train_loss", "val_CIDEr")})
    c.values.update(batch_size=cfg.batch_size, best=str(StageFolder(Path(result["dir"])).best))
    if s.device == "cuda":
        c.values["peak_gpu_mib"] = mib(torch.cuda.max_memory_allocated())
    if record["steps"] != want or not math.isfinite(record.get("train_loss", math.nan)):
        raise Failed(f"{record['steps']} steps (want {want}), train loss {record.get('train_loss')}")
    if not StageFolder(Path(result["dir"])).best.exists():
        raise Failed(f"{result['dir']}: no best.pt after the epoch")
    return (f"{record['steps']} steps of {cfg.batch_size}, {record['clips_per_s']} clips/s, loss "
            f"{record['train_loss']:.4f}, val CIDEr {100 * (record.get('val_CIDEr') or 0):.2f}")


CHECKS: list[tuple[str, Callable[[Context, Check], str]]] = [
    ("environment", check_environment), ("data", check_data), ("dali_decode", check_dali_decode),
    ("stage1", check_stage(1)), ("stage2", check_stage(2)), ("stage3", check_stage(3)),
    ("process_group", check_process_group), ("dali_epoch", check_dali_epoch)]


# ---- running and reporting --------------------------------------------------------------------
def _on_alarm(signum: int, frame: object) -> None:
    raise OverBudget


def run_check(ctx: Context, c: Check, fn: Callable[[Context, Check], str]) -> None:
    """Run one check; whatever it raises becomes its status and one line (the traceback is kept)."""
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            c.detail, c.status = fn(ctx, c), "PASS"
        except Skip as e:
            c.status, c.detail = "SKIP", str(e)
        except Failed as e:
            c.status, c.detail = "FAIL", str(e)
        except OverBudget:
            c.status, c.detail = "FAIL", f"over the budget of {ctx.s.budget_s:.0f} s (--budget-s) during this check"
        except Exception as e:  # a crash (a UserError too) is a failure to report, not the end of the run
            c.status, c.detail = "FAIL", f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
            c.values["traceback"] = traceback.format_exc().splitlines()[-12:]
    seen = sorted({f"{w.category.__name__}: {' '.join(str(w.message).split())[:200]}" for w in caught})
    if seen:
        c.values["warnings"] = seen[:10]
    c.seconds = round(time.perf_counter() - t, 2)


def report(ctx: Context, checks: list[Check], finished: bool) -> dict:
    s = ctx.s
    return {"tool": "bench/acceptance/gpu_check.py", "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "dry_run": s.dry_run, "device": s.device, "preset": s.preset, "overrides": s.overrides, "steps": s.steps,
            "budget_s": s.budget_s, "elapsed_s": round(time.perf_counter() - ctx.t0, 2), "finished": finished,
            "passed": finished and all(c.status != "FAIL" for c in checks),
            "checks": [asdict(c) for c in checks]}


def markdown(r: dict) -> str:
    """The report for a reader: the verdict, one row per check, then each check's numbers."""
    verdict = "PASS" if r["passed"] else ("FAIL" if r["finished"] else "INCOMPLETE")
    lines = [f"# GPU check: {verdict}", "",
             f"{r['when']}; {'dry run on the CPU' if r['dry_run'] else 'device ' + r['device']}, preset "
             f"{r['preset']}{' ' + ' '.join(r['overrides']) if r['overrides'] else ''}, {r['steps']} steps per "
             f"stage and precision; {r['elapsed_s']:.0f} s of a {r['budget_s']:.0f} s budget.", "",
             "| # | check | status | seconds | result |", "|---|---|---|---|---|"]
    for c in r["checks"]:
        lines.append(f"| {c['n']} | {c['name']} | {c['status']} | {c['seconds']:.1f} | {c['detail'].replace('|', ESCAPED_BAR)} |")
    lines.append("")
    for c in r["checks"]:
        if c["values"]:
            lines += [f"## {c['n']}. {c['name']}", ""]
            lines += [f"- {k}: `{v}`" for k, v in c["values"].items()]
            lines.append("")
    return "\n".join(lines)


def write_report(ctx: Context, checks: list[Check], finished: bool) -> dict:
    r = report(ctx, checks, finished)
    ctx.s.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(ctx.s.out / "gpu_report.json", r)
    write_bytes_atomic(ctx.s.out / "gpu_report.md", markdown(r).encode())
    return r


def run_all(s: Settings) -> dict:
    """Every check in order, the report rewritten after each; the budget is a soft alarm (the check
    running then fails, the rest are not run) and, HARD_STOP_AFTER_S later, a hard exit."""
    ctx = Context(s)
    checks = [Check(i + 1, name) for i, (name, _) in enumerate(CHECKS)]
    fns = dict(CHECKS)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(max(1, math.ceil(s.budget_s)))
    faulthandler.dump_traceback_later(s.budget_s + HARD_STOP_AFTER_S, exit=True)
    try:
        for c in checks:
            spent = time.perf_counter() - ctx.t0
            if spent >= s.budget_s:
                c.status, c.detail = "FAIL", f"not run: the budget of {s.budget_s:.0f} s was spent ({spent:.0f} s)"
            else:
                # on disk before it runs: a hard stop leaves this line, not an empty FAIL, in the report
                c.detail = f"running when the report was last written (a hard stop {HARD_STOP_AFTER_S} s after the budget ends here)"
                write_report(ctx, checks, finished=False)
                try:
                    run_check(ctx, c, fns[c.name])
                except OverBudget:  # the alarm landed between run_check's handlers and its return
                    c.status, c.detail = "FAIL", f"over the budget of {s.budget_s:.0f} s (--budget-s) during this check"
            print(f"[{c.n}] {c.name:<14} {c.status}  {c.seconds:7.1f} s  {c.detail}", flush=True)
            write_report(ctx, checks, finished=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()
    return write_report(ctx, checks, finished=True)


def parse(argv: list[str]) -> Settings:
    p = ArgumentParser(prog=PROG, description="check vidcap's GPU code paths (DALI decode, CUDA, bf16, NCCL) "
                       "and write gpu_report.json / .md", epilog="key=value: TrainConfig overrides for every "
                       "training check, as `train` takes them (batch_size=32, model.hidden=512, ...)")
    p.add_argument("--dry-run", action="store_true", help="the same checks on the CPU at tiny sizes (CI)")
    p.add_argument("--data", default=None, help="a pipeline build to use instead of building the built-in data")
    p.add_argument("--work", default=str(REPO / "bench" / "acceptance" / "gpu_check_work"),
                   help="where the data and the runs go (default bench/acceptance/gpu_check_work; a rerun reuses the data)")
    p.add_argument("--out", default=str(REPO / "bench" / "acceptance"),
                   help="folder of gpu_report.json and .md (default bench/acceptance/)")
    p.add_argument("--budget-s", type=float, default=300.0, help="seconds the whole run may take (default 300)")
    p.add_argument("--preset", default=None, choices=list(SCHEDULES),
                   help="model sizes and batch shapes (default paper; tiny with --dry-run)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"steps per stage and precision (default {GPU_STEPS}; {DRY_STEPS} with --dry-run)")
    p.add_argument("--clips", type=int, default=None,
                   help=f"clips of the built-in data (default {GPU_CLIPS}; {DRY_CLIPS} with --dry-run)")
    p.add_argument("overrides", nargs="*", help="key=value")
    a = p.parse_args(argv)
    if a.budget_s < 10:
        p.error(f"--budget-s {a.budget_s}: must be >= 10")
    if a.steps is not None and a.steps < 2:
        p.error(f"--steps {a.steps}: must be >= 2 (the first step is the warm-up, not timed)")
    if a.clips is not None and not 10 <= a.clips <= 100_000:
        p.error(f"--clips {a.clips}: must be between 10 and 100000")
    if not a.dry_run and not torch.cuda.is_available():
        raise UserError(f"CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
                        f"{torch.cuda.device_count()} GPUs visible): run it on a GPU machine, or pass --dry-run "
                        "for the CPU rehearsal")
    preset = a.preset or ("tiny" if a.dry_run else "paper")
    try:
        make_train_config(1, preset, a.overrides)  # a bad key=value is one line now, not a FAIL per check
    except ValueError as e:
        raise UserError(str(e)) from None
    data = Path(a.data).resolve() if a.data else None
    if data is not None and not (data / "build.json").exists():
        raise UserError(f"--data {a.data}: not a pipeline build (no build.json)")
    return Settings(dry_run=a.dry_run, device="cpu" if a.dry_run else "cuda", preset=preset, overrides=a.overrides,
                    steps=a.steps or (DRY_STEPS if a.dry_run else GPU_STEPS),
                    clips=a.clips or (DRY_CLIPS if a.dry_run else GPU_CLIPS), data=data,
                    work=Path(a.work).resolve(), out=Path(a.out).resolve(), budget_s=a.budget_s,
                    workers=2 if a.dry_run else max(1, min(16, os.cpu_count() or 1)))


def main(argv: list[str] | None = None) -> int:
    with cli_errors(PROG):
        s = parse(sys.argv[1:] if argv is None else argv)
    r = run_all(s)
    counts = {k: sum(c["status"] == k for c in r["checks"]) for k in STATUSES}
    print(f"{PROG}: {'PASS' if r['passed'] else 'FAIL'} ({counts['PASS']} passed, {counts['FAIL']} failed, "
          f"{counts['SKIP']} skipped) in {r['elapsed_s']:.0f} s; {s.out / 'gpu_report.md'}")
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
