"""The README's results on the realistic built-in world (issue 20), from `make demo` runs at several seeds.

Reads back what each demo left -- it trains nothing -- and reports:
- per stage, mean ± std over seeds of CIDEr and the action / colour / shape / all-three accuracies on
  the realistic test split, on its unseen (held-out) combinations, and on the clean-world test set;
- paired differences between stages over all seeds' realistic test clips pooled (per-clip CIDEr and
  slot correctness: the same clips under two checkpoints), with their standard errors;
- per recorded nuisance of the realistic test clips, the stage-3 accuracies (pooled over seeds);
- the robustness tables of the stage-3 models (mean over seeds, and the worst drop from clean);
- with --before MODEL_DIR..., the same robustness table of older models (e.g. the clean-world demo model),
  read from their robustness.json files.

- with --against DEMO..., the same seeds run with another setting: per stage, these demos minus
  those, paired over the realistic test clips (the same clips: the same seed renders the same world).

Usage: python -m bench.results.real_world_seeds DEMO [DEMO ...] [--before ROB_JSON ...] [--against DEMO ...]
       [--out bench/results/real_world_seeds_report.json] [--figure PNG]
(writes the .json, a .md of its tables and a .png of the stage-3 robustness beside it; the README's figure is
that plot, written with --figure docs/img/real-world-robustness.png)
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from bench.common import report_path, write_report
from vidcap.atomic import write_bytes_atomic
from vidcap.evalkit.coco import Scorer
from vidcap.evalkit.grounding import per_clip_correct
from vidcap.shards.layout import Build
from vidcap.train.ablate import over_seeds
from vidcap.train.evaluate import paired_difference
from vidcap.train.recipes import STAGES as RECIPE_OF
from vidcap.train.run_folder import EVAL_METRICS, GROUPS, PREDICTIONS, ROBUSTNESS_JSON, RunFolder

STAGES = (1, 2, 3)
README_FIGURE = "docs/img/real-world-robustness.png"  # written with --figure, never copied by hand
ACC = ("action_acc", "colour_acc", "shape_acc", "all_acc")
SLOTS = ("action", "colour", "shape", "all")


def _correct(preds: dict, objects: dict) -> dict[str, dict[str, bool]]:
    rows = per_clip_correct(preds, objects)
    return {c: {**{s: r[s] for s in SLOTS[:3]}, "all": all(r[s] for s in SLOTS[:3])} for c, r in rows.items()}


def load_seed(demo: Path, scorer: Scorer) -> dict:
    metas = Build(demo / "data").split("test").metas
    refs = {m["clip_id"]: m["captions"] for m in metas}
    objects = {m["clip_id"]: m["objects"] for m in metas if m.get("objects")}
    stages = {}
    for s in STAGES:
        d = RunFolder(demo / "run").stage(RECIPE_OF[s])
        preds = json.loads((d.eval_dir("test", 3) / PREDICTIONS).read_text())
        per_clip = scorer.score(preds, refs, per_clip=True)["per_clip"]
        stages[s] = {"realistic": json.loads((d.eval_dir("test", 3) / EVAL_METRICS).read_text()),
                     "groups": json.loads((d.eval_dir("test", 3) / GROUPS).read_text()),
                     "clean": json.loads((d.eval_dir("test", 3, "clean") / EVAL_METRICS).read_text()),
                     "cider": {c: v["CIDEr"] for c, v in per_clip.items()}, "correct": _correct(preds, objects)}
    rob = RunFolder(demo / "run").stage(RECIPE_OF[3]).robustness / ROBUSTNESS_JSON
    return {"demo": str(demo), "stages": stages, "robustness": json.loads(rob.read_text()) if rob.exists() else None}


def per_stage(seeds: list[dict]) -> list[dict]:
    rows = []
    for s in STAGES:
        row = {"stage": s}
        for where in ("realistic", "clean"):
            row[where] = over_seeds([sd["stages"][s][where] for sd in seeds], ["CIDEr", *ACC])
        row["unseen"] = over_seeds([{k: sd["stages"][s]["groups"]["unseen"][k] for k in ACC}
                                    for sd in seeds if "unseen" in sd["stages"][s]["groups"]], list(ACC))
        row["seen"] = over_seeds([{k: sd["stages"][s]["groups"]["seen"][k] for k in ACC}
                                  for sd in seeds if "seen" in sd["stages"][s]["groups"]], list(ACC))
        rows.append(row)
    return rows


def paired_runs(first: list[dict], second: list[dict]) -> dict:
    """second - first over the realistic test clips of all seeds pooled (the same clips under two
    checkpoints: one stage result per seed in each list, seeds in the same order)."""
    out = {}
    pool = lambda runs, f: {(i, c): v for i, run in enumerate(runs) for c, v in f(run).items()}  # noqa: E731
    m, se = paired_difference(pool(first, lambda r: r["cider"]), pool(second, lambda r: r["cider"]))
    out["CIDEr"] = {"diff": 100 * m, "se": 100 * se}
    for slot in SLOTS:
        ca = pool(first, lambda r, s=slot: {c: float(v[s]) for c, v in r["correct"].items()})
        cb = pool(second, lambda r, s=slot: {c: float(v[s]) for c, v in r["correct"].items()})
        m, se = paired_difference(ca, cb)
        out[slot] = {"diff": 100 * m, "se": 100 * se, "fixed": sum(cb[k] > ca[k] for k in ca),
                     "broken": sum(cb[k] < ca[k] for k in ca)}
    return out


def paired(seeds: list[dict], a: int, b: int) -> dict:
    return paired_runs([sd["stages"][a] for sd in seeds], [sd["stages"][b] for sd in seeds])


def by_nuisance(seeds: list[dict], stage: int = 3) -> dict:
    """Per group of `train eval` (each nuisance, seen / unseen): clips pooled over seeds, accuracies."""
    groups: dict[str, dict] = {}
    for sd in seeds:
        for name, g in sd["stages"][stage]["groups"].items():
            acc = groups.setdefault(name, {"clips": 0, **{k: 0.0 for k in ACC}})
            acc["clips"] += g["clips"]
            for k in ACC:
                acc[k] += g[k] * g["clips"]
    return {n: {"clips": g["clips"], **{k: g[k] / g["clips"] for k in ACC}} for n, g in sorted(groups.items())}


def robustness_mean(results: list[dict]) -> list[dict]:
    """Rows of several robustness.json files (the same conditions), mean and std over them."""
    rows = []
    for i, r0 in enumerate(results[0]["rows"]):
        runs = [r["rows"][i] for r in results]
        rows.append({"nuisance": r0["nuisance"], "strength": r0["strength"], "held_out": r0["held_out"],
                     **over_seeds(runs, [*ACC, "CIDEr"])})
    return rows


def summarise(seeds: list[dict], before: list[dict]) -> dict:
    rob = [sd["robustness"] for sd in seeds if sd["robustness"]]
    return {"demos": [sd["demo"] for sd in seeds], "per_stage": per_stage(seeds),
            "paired": {f"{b} - {a}": paired(seeds, a, b) for a, b in ((1, 2), (2, 3), (1, 3))},
            "stage3_by_nuisance": by_nuisance(seeds),
            "robustness": robustness_mean(rob) if rob else None,
            "robustness_before": robustness_mean(before) if before else None}


def _ms(d: dict | None, k: str) -> str:
    if not d or k not in d:
        return "-"
    return f"{100 * d[k]['mean']:.1f} ± {100 * d[k]['std']:.1f}"


def _paired_cells(p: dict) -> list[str]:
    cells = [f"{p['CIDEr']['diff']:+.1f} ± {p['CIDEr']['se']:.1f} ({p['CIDEr']['diff'] / max(p['CIDEr']['se'], 1e-9):.1f} SE)"]
    for slot in SLOTS:
        q = p[slot]
        cells.append(f"{q['diff']:+.1f} ± {q['se']:.1f} ({q['diff'] / max(q['se'], 1e-9):.1f} SE); "
                     f"{q['fixed']} fixed, {q['broken']} broken")
    return cells


def format_markdown(r: dict) -> str:
    n = len(r["demos"])
    out = [f"## Per stage, mean ± std over {n} seeds (test split, beam 3)", "",
           "| after | set | CIDEr | action % | colour % | shape % | all three % |", "|---|---|---|---|---|---|---|"]
    for row in r["per_stage"]:
        for where in ("realistic", "unseen", "clean"):
            cider = _ms(row[where], "CIDEr") if where != "unseen" else "-"
            out.append(f"| stage {row['stage']} | {where} | {cider} | " + " | ".join(_ms(row[where], k) for k in ACC) + " |")
    out += ["", f"## Paired stage differences, realistic test clips of the {n} seeds pooled (mean ± SE; fixed / broken clips)",
            "", "| | CIDEr | action | colour | shape | all three |", "|---|---|---|---|---|---|"]
    out += [f"| stage {name} | " + " | ".join(_paired_cells(p)) + " |" for name, p in r["paired"].items()]
    if r.get("against"):
        out += ["", f"## These demos - the --against demos ({', '.join(r['against']['demos'])}), the same seeds: "
                "paired over their realistic test clips pooled (mean ± SE; fixed / broken clips)", "",
                "| | CIDEr | action | colour | shape | all three |", "|---|---|---|---|---|---|"]
        out += [f"| stage {s} | " + " | ".join(_paired_cells(p)) + " |" for s, p in r["against"]["per_stage"].items()]
    out += ["", "## Stage 3 per recorded nuisance of the realistic test clips (pooled over seeds)", "",
            "| clips with | n | action % | colour % | shape % | all three % |", "|---|---|---|---|---|---|"]
    for name, g in r["stage3_by_nuisance"].items():
        out.append(f"| {name} | {g['clips']} | " + " | ".join(f"{100 * g[k]:.1f}" for k in ACC) + " |")
    for key, title in (("robustness_before", "before (the clean-world demo model)"), ("robustness", "after (stage 3)")):
        if not r.get(key):
            continue
        out += ["", f"## Robustness, {title}: clean-world test clips, one nuisance at a time (* held out)", "",
                "| nuisance | strength | action % | colour % | shape % | all three % | CIDEr |",
                "|---|---|---|---|---|---|---|"]
        for row in r[key]:
            name = row["nuisance"] + (" *" if row["held_out"] else "")
            out.append(f"| {name} | {row['strength'] or '-'} | " + " | ".join(_ms(row, k) for k in (*ACC, "CIDEr")) + " |")
    return "\n".join(out) + "\n"


def plot_robustness(rows: list[dict], n_seeds: int, path: Path) -> None:
    """Bars per nuisance (standard strength) and slot: the mean over seeds, its std as a whisker,
    the clean split as a dotted line per slot; held-out nuisances hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean, rest = rows[0], rows[1:]
    fig, ax = plt.subplots(figsize=(13, 4))
    width = 0.2
    for j, (key, label) in enumerate(zip(ACC, ("action", "colour", "shape", "all three"), strict=True)):
        xs = [i + (j - 1.5) * width for i in range(len(rest))]
        bars = ax.bar(xs, [100 * r[key]["mean"] for r in rest], width, yerr=[100 * r[key]["std"] for r in rest],
                      label=label, capsize=2, color=f"C{j}")
        for b, r in zip(bars, rest, strict=True):
            if r["held_out"]:
                b.set_hatch("//")
        ax.axhline(100 * clean[key]["mean"], color=f"C{j}", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(rest)), [r["nuisance"] + (" *" if r["held_out"] else "") for r in rest],
                  fontsize=8, rotation=20, ha="right")
    ax.set_ylim(50, 100)
    ax.set_ylabel("% of clips right")
    ax.set_title(f"stage 3 under each nuisance at standard strength, mean ± std over {n_seeds} seeds "
                 "(dotted: clean; * hatched: held out)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left", ncol=4)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demos", nargs="+", type=Path)
    ap.add_argument("--before", nargs="*", type=Path, default=[], help="robustness.json files of older models")
    ap.add_argument("--against", nargs="*", type=Path, default=[],
                    help="the same seeds' demos with another setting (same order): paired differences per stage")
    ap.add_argument("--out", type=Path, default=report_path(__file__))
    ap.add_argument("--figure", type=Path, default=None,
                    help=f"also write the stage-3 robustness plot here (the README shows {README_FIGURE})")
    a = ap.parse_args(argv)
    if a.against and len(a.against) != len(a.demos):
        ap.error(f"--against: {len(a.against)} demos for {len(a.demos)} seeds (one per seed, same order)")
    with Scorer(meteor=False) as scorer:
        seeds = [load_seed(d, scorer) for d in a.demos]
        others = [load_seed(d, scorer) for d in a.against]
    report = summarise(seeds, [json.loads(p.read_text()) for p in a.before])
    if others:
        report["against"] = {"demos": [str(d) for d in a.against], "per_stage": {
            str(s): paired_runs([o["stages"][s] for o in others], [sd["stages"][s] for sd in seeds]) for s in STAGES}}
    md = format_markdown(report)
    write_report(a.out, report, md)
    if report["robustness"]:
        for png in (a.out.with_suffix(".png"), a.figure):
            if png is not None:
                plot_robustness(report["robustness"], len(seeds), png)
    print(md)
    return report


if __name__ == "__main__":
    main()
