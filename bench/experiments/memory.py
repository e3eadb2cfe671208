"""Where a training step's memory goes, for the ``paper`` preset at its batch sizes with an MSR-VTT-sized
vocabulary (issue 39), with and without each memory option, measured on this CPU.

Each configuration runs in a fresh process (so peaks never mix), ``nice``d, its RSS watched by this
one and the process stopped past ``--cap-gb`` (the machine is shared; a plain stage 3 was killed by
the OOM killer at 19.0 GB in the rehearsal, bench/experiments/rehearsal_report.md). A child:

- builds the paper model (Inception-ResNet-v2 at 224, random init: the same tensors as with its
  weights; LSTM hidden 1000, embeddings 500, 400 attributes) over a 9,439-word vocabulary (the
  rehearsal's 10,000-clip build), and the trainer's own step (``Trainer.step``: the recipe's loss,
  backward, clipping, Adam) with its optimiser state already allocated, so the one measured step is
  the steady state's;
- feeds it a synthetic batch of the stage's shape: stage 2, cached features (batch x 5 x 1536);
  stage 3, frames (batch x 5 x 3 x 224 x 224 uint8); 20 captions per clip of 9 words drawn from the
  vocabulary, the CIDEr-D reward over them. An untrained decoder seldom draws <eos>, so every
  sample runs the full 35 words: the worst case of a trained one;
- applies the ``train`` CLI's allocator settings (vidcap.allocator.keep_freed_memory) and 2 torch
  threads, and reports peak RSS (VmHWM), the step's seconds, and what autograd kept for backward,
  by part (saved-tensor hooks: the CNN's activations, the sampled captions' graph, the teacher-forced
  replay of accumulate, the attribute head), with parameters, gradients and Adam's moments counted.

``--parts phases`` measures, once per stage, the transient parts with glibc's default allocator (which
hands big blocks back, so a phase's RSS growth is its own): the greedy baseline, beam search (3, the
eval batch), the reward, and the loader's batch and feature cache by size.

"before" is the code before issue 39: decoding.LEAN_SAMPLING and s2vt.LEAN_RNN off (each step's full
log-softmax, oneDNN's RNN workspace). A configuration over the cap is measured at a smaller batch
and what it keeps for backward scaled by the batch (each part grows linearly with the clips).

Usage: nice python -m bench.experiments.memory [--parts steps,phases] [--only NAME,...] [--cap-gb 15]
       [--out bench/experiments/memory_report.json]   (writes the .json and a .md beside it)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO
from vidcap.atomic import write_bytes_atomic, write_json_atomic

VOCAB = 9439  # the rehearsal's 10,000-clip build (bench/experiments/rehearsal_report.md)
GB = 1e9

# name: (stage, batch, lean, grad_checkpoint, accumulate). The paper's batch sizes: 256 (stage 2), 16 (stage 3).
CONFIGS: dict[str, tuple[int, int, bool, bool, int]] = {
    "s3 lean ckpt": (3, 16, True, True, 1),
    "s2 lean": (2, 256, True, False, 1),
    "s3 lean acc4": (3, 16, True, False, 4),
    "s3 lean ckpt acc2": (3, 16, True, True, 2),
    "s2 lean acc4": (2, 256, True, False, 4),
    # smaller batches: the cost of each option, and what grows per clip (scaled to the paper's batch)
    "s2 before b32": (2, 32, False, False, 1),
    "s2 lean b32": (2, 32, True, False, 1),
    "s2 lean acc4 b32": (2, 32, True, False, 4),
    "s3 before b4": (3, 4, False, False, 1),
    "s3 lean b4": (3, 4, True, False, 1),
    "s3 lean ckpt b4": (3, 4, True, True, 1),
    "s3 lean acc2 b4": (3, 4, True, False, 2),
    "s3 lean": (3, 16, True, False, 1),
    "s3 before": (3, 16, False, False, 1),
}


def vocabulary() -> list[str]:
    from vidcap.tokens import SPECIALS

    return [*SPECIALS, *(f"w{i}" for i in range(VOCAB - len(SPECIALS)))]


def synthetic_batch(stage: int, batch: int, itos: list[str], seed: int = 0) -> dict:
    """A batch of the stage's shape: features (stage 2) or frames (stage 3), captions, attributes."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    zipf = 1.0 / np.arange(1, len(itos) - 3)  # words drawn by a Zipf law, as real captions' are
    zipf /= zipf.sum()
    words = itos[4:]
    caps = [[" ".join(rng.choice(words, 9, p=zipf)) for _ in range(20)] for _ in range(batch)]
    out = {"clip_id": [f"clip{i}" for i in range(batch)], "captions": caps,
           "attrs": (torch.rand(batch, 400, generator=g) > 0.97).float()}
    if stage == 2:
        out["feats"] = torch.randn(batch, 5, 1536, generator=g).relu()
    else:
        out["frames"] = torch.randint(0, 256, (batch, 5, 3, 224, 224), dtype=torch.uint8, generator=g)
    return out


def _peak_rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GB
    return float("nan")


def _rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GB
    return float("nan")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _trainer(stage: int, batch: int, grad_checkpoint: bool, accumulate: int, keep_cnn_grad: bool = True):
    """The trainer's step without a build: a Trainer whose set-up is done by hand (model, optimiser, step)."""
    import torch

    from vidcap.evalkit.cider import CiderD
    from vidcap.model import create_model, make_config
    from vidcap.train import distributed
    from vidcap.train.config import make_train_config
    from vidcap.train.loop import Trainer, param_groups
    from vidcap.train.resume import Position
    from vidcap.train.step import RecipeLoss

    itos = vocabulary()
    data = synthetic_batch(stage, batch, itos)
    cfg = make_train_config(stage, "paper", [f"batch_size={batch}", f"grad_checkpoint={grad_checkpoint}",
                                             f"accumulate={accumulate}", "seed=0"])
    torch.manual_seed(0)
    model = create_model(make_config("paper", len(itos), pretrained=False, n_frames=5))
    model.freeze_backbone(not cfg.train_cnn, bn_stats=cfg.bn_stats)
    tr = Trainer.__new__(Trainer)
    tr.cfg, tr.model, tr.dist = cfg, model, distributed.setup("cpu", cfg.dist_timeout)
    tr.device, tr.position, tr.n_train = torch.device("cpu"), Position(), 6513  # MSR-VTT's training clips
    tr.opt = torch.optim.Adam(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tr.base_lrs = [g["lr"] for g in tr.opt.param_groups]
    params = [p for g in tr.opt.param_groups for p in g["params"]]
    for p in params:  # Adam's moments allocated now: the measured step is the steady state's
        p.grad = torch.zeros_like(p)
    tr.opt.step()
    tr.opt.zero_grad(set_to_none=True)
    reward = CiderD(itos, dict(zip(data["clip_id"], data["captions"], strict=True))).score
    tr.loss = tr.step_module = RecipeLoss(model, cfg, {w: i for i, w in enumerate(itos)}, reward)
    return tr, data, params


def step_child(spec: dict) -> dict:
    """One measured step of a configuration (this process only)."""
    import torch

    from vidcap.allocator import keep_freed_memory
    from vidcap.model import decoding, s2vt

    keep_freed_memory()
    torch.set_num_threads(2)
    decoding.LEAN_SAMPLING = s2vt.LEAN_RNN = spec["lean"]
    tr, batch, params = _trainer(spec["stage"], spec["batch"], spec["grad_checkpoint"], spec["accumulate"])
    model = tr.model
    state_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())
    trained = sum(p.numel() * p.element_size() for p in params)
    seen: dict[int, tuple[str, int]] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    part = ["other"]

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights and ptr not in seen:
            seen[ptr] = (part[0], t.untyped_storage().nbytes())
        # detached: the tensor itself would tie an output to its own grad_fn, a reference cycle that
        # keeps a graph never backpropagated (accumulate's draws pass) alive until the next gc
        return t.detach()

    def tagged(name: str, fn):
        def run(*args, **kwargs):
            before, part[0] = part[0], name
            try:
                return fn(*args, **kwargs)
            finally:
                part[0] = before
        return run

    model.frame_features = tagged("CNN activations", model.frame_features)
    model.sample = tagged("sampled captions (graph)", model.sample)
    model.attribute_logits = tagged("attribute head", model.attribute_logits)
    decoding.chosen_logprobs = tagged("samples replayed (accumulate)", decoding.chosen_logprobs)
    rss0 = _rss()
    _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stats = tr.step(batch, 0)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    kept: dict[str, float] = {}
    for name, nbytes in seen.values():
        kept[name] = kept.get(name, 0.0) + nbytes / GB
    return {**spec, "peak_rss_gb": round(_peak_rss(), 3), "rss_before_step_gb": round(rss0, 3),
            "step_s": round(seconds, 1), "step_cpu_s": round(cpu_seconds, 1), "loss": stats["loss"],
            "kept_for_backward_gb": {k: round(v, 3) for k, v in sorted(kept.items())},
            "weights_gb": round(state_bytes / GB, 3), "grads_and_adam_gb": round(3 * trained / GB, 3),
            "vocab": VOCAB, "threads": torch.get_num_threads()}


def phases_child(spec: dict) -> dict:
    """The transient parts of a stage, each its own RSS growth under glibc's default allocator."""
    import numpy as np
    import torch

    from vidcap.model import decoding

    torch.set_num_threads(2)
    tr, batch, _ = _trainer(spec["stage"], spec["batch"], False, 1)
    model, cfg = tr.model, tr.cfg
    out = {}

    def measure(name: str, fn):
        rss0 = _rss()
        _reset_peak()
        t0 = time.perf_counter()
        res = fn()
        out[name] = {"gb": round(max(_peak_rss() - rss0, 0.0), 3), "s": round(time.perf_counter() - t0, 2)}
        return res

    model.eval()
    with torch.no_grad():
        feats = measure("CNN features, no grad", lambda: tr.loss.features(batch))
        seqs = measure("greedy baseline", lambda: model.greedy(feats))
        ids = [c for c in batch["clip_id"] for _ in range(cfg.samples)]
        samples = seqs.repeat_interleave(cfg.samples, 0).numpy()
        measure("reward (CIDEr-D of B x M samples)", lambda: tr.loss.reward(ids, samples))
        eval_batch = 64 if spec["stage"] == 2 else 16  # Trainer.predict's batches
        measure(f"beam search 3, eval batch {eval_batch}", lambda: decoding.beam(model, feats[:eval_batch], 3))
    n = batch["feats" if "feats" in batch else "frames"]
    out["loader batch"] = {"gb": round(n.numel() * n.element_size() / GB, 3), "s": None}
    out["feature cache, 6,513 + 497 clips"] = {"gb": round(7010 * 5 * 1536 * 4 / GB, 3) if spec["stage"] == 2 else 0.0,
                                                "s": None}
    del np
    return {**spec, "phases": out}


CHILD = """
import json, sys
from bench.experiments.memory import step_child, phases_child
spec = json.loads(sys.argv[1])
res = (phases_child if spec["part"] == "phases" else step_child)(spec)
print("RESULT " + json.dumps(res))
"""


def run_child(spec: dict, cap_gb: float, log: Path) -> dict:
    """`spec` in a fresh nice'd process, stopped past cap_gb of RSS; its result, or why it has none."""
    cmd = ["nice", "-n", str(max(0, 10 - os.nice(0))), sys.executable, "-c", CHILD, json.dumps(spec)]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        peak, capped = 0.0, False
        while proc.poll() is None:
            try:
                rss = next(int(x.split()[1]) for x in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                           if x.startswith("VmRSS:")) * 1024 / GB
            except (OSError, StopIteration):
                rss = 0.0
            peak = max(peak, rss)
            if rss > cap_gb:
                proc.kill()
                capped = True
            time.sleep(0.5)
    text = log.read_text()
    line = next((x for x in text.splitlines() if x.startswith("RESULT ")), None)
    if line:
        return json.loads(line[7:])
    why = f"stopped at the {cap_gb} GB cap" if capped else f"exit {proc.returncode}: {text.strip()[-300:]}"
    return {**spec, "error": why, "peak_rss_gb": round(peak, 3)}


def extrapolated(report: dict) -> dict:
    """What the configurations not run at the paper's batch would keep for backward there: each part
    measured at a smaller batch, x (paper batch / that batch) -- they grow linearly with the clips."""
    rows = {r["name"]: r for r in report["steps"] if "error" not in r}
    out = {}
    for small, batch in (("s2 before b32", 256), ("s2 lean b32", 256), ("s3 before b4", 16), ("s3 lean b4", 16)):
        if small in rows:
            r = rows[small]
            k = batch / r["batch"]
            out[f"{small.rsplit(' ', 1)[0]} at batch {batch}: kept for backward GB"] = {
                part: round(gb * k, 2) for part, gb in r["kept_for_backward_gb"].items()}
    return out


CARDS_GB = (12, 24, 40, 80)
GPU_SLACK = 1.15  # the caching allocator's slack over the live tensors (docs/benchmarks.md: the projection)
LINES = {  # (label, the two configurations a line of peak against batch goes through)
    "stage 2": ("s2 lean b32", "s2 lean"),
    "stage 3": ("s3 lean b4", "s3 lean"),
    "stage 3, grad_checkpoint": ("s3 lean ckpt b4", "s3 lean ckpt"),
}


def fits(report: dict) -> dict:
    """Peak = fixed + per clip x batch through two measured batches; the largest batch whose projected
    GPU peak (x GPU_SLACK) fits each card."""
    rows = {r["name"]: r for r in report["steps"] if "error" not in r}
    out = {}
    for label, (a, b) in LINES.items():
        if a in rows and b in rows:
            ra, rb = rows[a], rows[b]
            per_clip = (rb["peak_rss_gb"] - ra["peak_rss_gb"]) / (rb["batch"] - ra["batch"])
            fixed = ra["peak_rss_gb"] - per_clip * ra["batch"]
            out[label] = {"fixed_gb": round(fixed, 2), "per_clip_gb": round(per_clip, 4),
                          "max_batch": {f"{g} GB": max(0, int((g / GPU_SLACK - fixed) / per_clip)) for g in CARDS_GB}}
    return out


def format_markdown(report: dict) -> str:
    lines = ["# Memory of a training step: `paper`, MSR-VTT-sized vocabulary (9,439 words)", "",
             f"{report['machine']}; each row a fresh process, one step after Adam's state is allocated; "
             "peak RSS (VmHWM) with the `train` CLI's allocator. Method: bench/experiments/memory.py's docstring.", "",
             "With accumulate, 'kept for backward' sums the micro-batches' (each one's freed after its backward).",
             "", "| configuration | stage | batch | M | lean | grad_checkpoint | accumulate | peak RSS GB | step s | "
             "CPU s | loss | kept for backward GB (by part) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["steps"]:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['stage']} | {r['batch']} | 8 | {r['lean']} | {r['grad_checkpoint']} | "
                         f"{r['accumulate']} | > {r['peak_rss_gb']} ({r['error'][:60]}) | — | — | — | — |")
            continue
        kept = ", ".join(f"{k} {v}" for k, v in r["kept_for_backward_gb"].items() if v)
        lines.append(f"| {r['name']} | {r['stage']} | {r['batch']} | 8 | {r['lean']} | {r['grad_checkpoint']} | "
                     f"{r['accumulate']} | {r['peak_rss_gb']} | {r['step_s']} | {r.get('step_cpu_s', '—')} | "
                     f"{r['loss']:.5g} | {kept}; "
                     f"weights {r['weights_gb']}, grads + Adam {r['grads_and_adam_gb']} |")
    if report.get("extrapolated"):
        lines += ["", "Scaled to the paper's batch (each part x batch / measured batch):", ""]
        lines += [f"- {k}: " + ", ".join(f"{part} {gb}" for part, gb in v.items() if gb) + (" (measured: peak "
                  "over the cap, or the OOM killer: bench/experiments/rehearsal_report.md)" if "before" in k else "")
                  for k, v in report["extrapolated"].items()]
    if report.get("fits"):
        lines += ["", f"Peak against batch (a line through two batches) and the largest batch per card (projected "
                  f"GPU peak = the CPU's x {GPU_SLACK}, fp32):", "",
                  "| stage | fixed GB | per clip GB | " + " | ".join(f"{g} GB" for g in CARDS_GB) + " |",
                  "|---|---|---|" + "---|" * len(CARDS_GB)]
        lines += [f"| {k} | {v['fixed_gb']} | {v['per_clip_gb']} | " + " | ".join(str(x) for x in v["max_batch"].values())
                  + " |" for k, v in report["fits"].items()]
    for p in report.get("phases", []):
        lines += ["", f"## Transient parts, stage {p['stage']} (batch {p['batch']}; RSS growth, glibc's default "
                  "allocator)", "", "| part | GB | s |", "|---|---|---|"]
        lines += [f"| {k} | {v['gb']} | {v['s'] if v['s'] is not None else '—'} |" for k, v in p["phases"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="steps,phases")
    ap.add_argument("--only", default=None, help="comma-separated configuration names (default: all)")
    ap.add_argument("--cap-gb", type=float, default=15.0)
    ap.add_argument("--out", default=str(REPO / "bench" / "experiments" / "memory_report.json"))
    ap.add_argument("--logs", default="/tmp/vidcap-memory-logs")
    a = ap.parse_args(argv)
    out, logs = Path(a.out), Path(a.logs)
    logs.mkdir(parents=True, exist_ok=True)
    report = json.loads(out.read_text()) if out.exists() else {}
    report["machine"] = f"{os.cpu_count()} CPU cores, torch threads 2"
    report.setdefault("steps", [])
    names = a.only.split(",") if a.only else list(CONFIGS)

    def save() -> None:
        report["extrapolated"] = extrapolated(report)
        report["fits"] = fits(report)
        write_json_atomic(out, report)
        write_bytes_atomic(out.with_suffix(".md"), format_markdown(report).encode())

    if "steps" in a.parts:
        for name in names:
            stage, batch, lean, ckpt, acc = CONFIGS[name]
            spec = {"part": "steps", "name": name, "stage": stage, "batch": batch, "lean": lean,
                    "grad_checkpoint": ckpt, "accumulate": acc}
            res = run_child(spec, a.cap_gb, logs / f"{name.replace(' ', '_')}.log")
            report["steps"] = [r for r in report["steps"] if r["name"] != name] + [res]
            report["steps"].sort(key=lambda r: list(CONFIGS).index(r["name"]))
            print(json.dumps(res), flush=True)
            save()
    if "phases" in a.parts:
        phases = []
        for stage, batch in ((2, 256), (3, 16)):
            res = run_child({"part": "phases", "stage": stage, "batch": batch}, a.cap_gb, logs / f"phases{stage}.log")
            phases.append(res)
            print(json.dumps(res), flush=True)
        report["phases"] = phases
        save()
    print(f"driver peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return report


if __name__ == "__main__":
    main()
