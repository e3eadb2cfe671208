"""Benchmark: S2VT against the transformer captioner on the built-in dataset -- the same shards, the
same trainer, the same three stages (issue 12). It need not say the transformer wins; it measures.

Per seed and architecture: `train --stage 1 -> 2 -> 3` (preset cpu-small by default, its schedules
unchanged, `model.arch=NAME` at stage 1); each stage's best checkpoint (by val CIDEr) is scored on
the test split, greedy as in the paper's Table 3: CIDEr (pycocoevalcap) and the grounded action /
colour / shape accuracies of the built-in dataset. The table is mean ± std over seeds, with each
architecture's captioner parameters (CNN excluded) and training minutes.

Data: --data DIR (a `pipeline build` of the built-in dataset), else a fresh one in --work
(`pipeline synth --clips N --seed 0`, `pipeline build` at 112 px, as `make demo`). A re-run resumes:
a scored stage's row.json is read back, a cut-off stage continues from its last.pt.

Usage: python -m bench.experiments.arch_compare [--data DIR | --clips 600] [--work bench/experiments/arch_compare_work] [--seeds 3]
       [--preset cpu-small] [--archs s2vt,transformer] [--out bench/experiments/arch_compare_report.json] [key=value ...]
Writes --out (JSON) and the table beside it (.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import REPO, report_path, write_report
from vidcap.atomic import write_json_atomic
from vidcap.evalkit.coco import Scorer
from vidcap.evalkit.metric_names import OBJECT_SLOTS, label
from vidcap.model import ARCHS
from vidcap.train.ablate import over_seeds
from vidcap.train.config import make_train_config
from vidcap.train.evaluate import evaluate_checkpoint
from vidcap.train.loop import run_stage
from vidcap.train.recipes import STAGES
from vidcap.train.run_folder import RunFolder

# (key in the scored metrics, column title, scale)
COLUMNS = (("CIDEr", "test CIDEr", 100), ("Bleu_4", label("Bleu_4"), 100),
           *((k, f"{label(k)} %", 100) for k in OBJECT_SLOTS), ("train_minutes", "train min", 1))


def built_in_data(work: Path, clips: int) -> Path:
    """A pipeline build of a fresh built-in dataset (reused when already there)."""
    from vidcap.pipeline.build import BuildConfig, build
    from vidcap.pipeline.synth import synthesize

    data = work / "data"
    if not (data / "build.json").exists():
        if not (work / "synth" / "videodatainfo.json").exists():
            synthesize(work / "synth", clips=clips, seed=0, workers=2)
        build(BuildConfig(dataset="msrvtt", root=str(work / "synth"), out=str(data), size=112, shard_size=128,
                          workers=2))
    return data


def stage_row(data: str, run: Path, arch: str, stage: int, seed: int, preset: str, overrides: list[str],
              scorer: Scorer, progress: bool) -> dict:
    """Train one stage (or read back its scored row) and score its best checkpoint on the test split."""
    d = RunFolder(run).stage(STAGES[stage])
    if d.row.exists():
        return json.loads(d.row.read_text())
    cfg = make_train_config(stage, preset, [*overrides, f"seed={seed}", f"model.arch={arch}"], data=data,
                            run=str(run), resume=d.last.exists() or None)
    t0 = time.perf_counter()
    run_stage(cfg, progress=progress)
    minutes = (time.perf_counter() - t0) / 60
    r = evaluate_checkpoint(str(d.best), data, "test", beam=1, out=str(d.eval_dir("test", 1)), scorer=scorer)
    start = json.loads(d.metrics.read_text().splitlines()[0])
    row = {"arch": arch, "seed": seed, "stage": stage, "train_minutes": round(minutes, 2),
           "captioner_params": start["params"]["captioner"], **r["metrics"]}
    write_json_atomic(d.row, row)
    return row


def summarise(rows: list[dict], archs: list[str]) -> list[dict]:
    out = []
    for arch in archs:
        for stage in (1, 2, 3):
            runs = [r for r in rows if r["arch"] == arch and r["stage"] == stage]
            entry = {"arch": arch, "stage": stage, "seeds": len(runs), "captioner_params": runs[0]["captioner_params"]}
            entry.update(over_seeds(runs, [key for key, _, _ in COLUMNS]))
            out.append(entry)
    return out


def format_markdown(report: dict) -> str:
    head = ["architecture", "stage", *(title for _, title, _ in COLUMNS)]
    lines = [f"# S2VT vs transformer: preset {report['preset']}, {report['seeds']} seed(s), test split, greedy", "",
             f"Data: `{report['data']}`; overrides: `{' '.join(report['overrides']) or 'none'}`. "
             "Mean ± std over training seeds.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in report["table"]:
        cells = [f"{e['arch']} ({e['captioner_params'] / 1e6:.2f} M)", str(e["stage"])]
        for key, _, scale in COLUMNS:
            v = e.get(key)
            cells.append("—" if v is None else f"{scale * v['mean']:.1f} ± {scale * v['std']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Parameters: the captioner without its CNN (the CNN is the same for both). train min: wall-clock "
              "minutes of the stage where it ran (features cached in stages 1-2); on a shared machine they time the "
              "load as much as the model, so compare speed with bench/speed/train.py and bench/speed/kv_cache.py instead."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="a pipeline build of the built-in dataset (default: make one)")
    p.add_argument("--clips", type=int, default=600, help="clips of the fresh built-in dataset (without --data)")
    p.add_argument("--work", default=str(REPO / "bench" / "experiments" / "arch_compare_work"), help="runs (and data) go here")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--archs", default="s2vt,transformer")
    p.add_argument("--out", default=str(report_path(__file__)))
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value for every stage of every run (e.g. max_clips=100)")
    a = p.parse_args(argv)
    archs = a.archs.split(",")
    unknown = [x for x in archs if x not in ARCHS]
    if unknown:
        p.error(f"--archs: unknown {', '.join(unknown)}; choose from {', '.join(sorted(ARCHS))}")
    make_train_config(1, a.preset, a.overrides)  # bad overrides fail now, not after an hour of training
    work = Path(a.work)
    data = str(Path(a.data) if a.data else built_in_data(work, a.clips))
    rows = []
    with Scorer(meteor=False) as scorer:
        for seed in range(a.seeds):
            for arch in archs:
                for stage in (1, 2, 3):
                    if not a.quiet:
                        print(f"== seed {seed}, {arch}, stage {stage} ==", flush=True)
                    rows.append(stage_row(data, work / f"seed{seed}" / arch, arch, stage, seed, a.preset,
                                          a.overrides, scorer, not a.quiet))
    report = {"data": data, "preset": a.preset, "seeds": a.seeds, "archs": archs, "overrides": a.overrides,
              "table": summarise(rows, archs), "rows": rows}
    write_report(Path(a.out), report, format_markdown(report))
    print(format_markdown(report))
    return report


if __name__ == "__main__":
    main()
