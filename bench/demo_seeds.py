"""The README's "Results on the built-in dataset", from `make demo` runs at several seeds.

`make demo DEMO=D SEED=s` leaves, per stage, the test split's predictions.json and metrics.json
(beam 3) and the probes of the CNN before / after stage 3. This reads them back -- it trains nothing
-- and reports, for the issue-9 questions:
- per stage, mean ± std over seeds of CIDEr, BLEU-4, METEOR and the action / colour / shape accuracy;
- paired differences between consecutive stages (mean over clips ± its standard error), per seed and
  pooled over all seeds' test clips: per-clip CIDEr (pycocoevalcap, the refs of the same clip) and
  per-clip slot correctness -- the same clips under two checkpoints, so clip difficulty cancels;
- one-object vs two-object clips, and how many colour errors name the *other* object's colour
  (the captioner describing the still object instead of the moving one);
- the stage-3 action confusion matrix (each demo's action_confusion.json), all seeds' test clips pooled;
- the `train probe` accuracies, mean ± std over seeds;
- with --control, stage 3's recipe run again from the same stage-2 checkpoint with the CNN frozen:
  stage 3 against it isolates what training the CNN adds, beyond one more epoch of RL + attributes;
- for each slot, how many clips the later stage fixed and broke (the paired test's discordant pairs:
  with a dozen errors left, a later stage passes two standard errors only by fixing most of them);
- how well the references agree with each other, to read CIDEr against: each reference scored
  against the clip's other references (leave one out, "human"), and the best of them per clip
  (a consensus oracle that knows which phrasing the other references happen to use).

Usage: python bench/demo_seeds.py DEMO [DEMO ...] [--control RUN ...] [--beam 3] [--out bench/demo_seeds_report.json]
Writes --out (JSON) and the tables beside it (.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidcap.atomic import write_bytes_atomic, write_json_atomic  # noqa: E402
from vidcap.evalkit.coco import Scorer  # noqa: E402
from vidcap.evalkit.grounding import per_clip_correct  # noqa: E402
from vidcap.evalkit.metric_names import OBJECT_SLOTS  # noqa: E402
from vidcap.evalkit.metric_names import label as metric_label  # noqa: E402
from vidcap.shards.layout import Build  # noqa: E402
from vidcap.train import run_folder as rf  # noqa: E402
from vidcap.train.ablate import over_seeds  # noqa: E402
from vidcap.train.evaluate import paired_difference  # noqa: E402
from vidcap.train.recipes import RECIPES  # noqa: E402
from vidcap.train.recipes import STAGES as RECIPE_OF  # noqa: E402
from vidcap.train.run_folder import RunFolder  # noqa: E402

STAGES = (1, 2, 3)
FROZEN = "3 (CNN frozen)"  # stage 3's recipe with the CNN frozen (--control): what training the CNN adds
SLOTS = ("action", "colour", "shape")
# (key in metrics.json, column title, scale)
COLUMNS = (*((k, metric_label(k), 100) for k in ("CIDEr", "Bleu_4", "METEOR")),
           *((k, f"{metric_label(k)} %", 100) for k in OBJECT_SLOTS))


def load_eval(d: Path, refs: dict, objects: dict, scorer: Scorer) -> dict:
    """One `train eval` folder: metrics, confusion, and per clip CIDEr and slot correctness."""
    preds = json.loads((d / rf.PREDICTIONS).read_text())
    per_clip = scorer.score(preds, refs, per_clip=True)["per_clip"]
    correct = per_clip_correct(preds, objects)
    return {"metrics": json.loads((d / rf.EVAL_METRICS).read_text()), "predictions": preds,
            "confusion": json.loads((d / rf.CONFUSION_JSON).read_text()),
            "cider": {c: v["CIDEr"] for c, v in per_clip.items()},
            "said_colour": {c: row["parsed"]["colour"] for c, row in correct.items()},
            **{slot: {c: row[slot] for c, row in correct.items()} for slot in SLOTS}}


def load_seed(demo: Path, beam: int, scorer: Scorer, control: Path | None = None) -> dict:
    """One demo's stages (and, given `control`, the frozen-CNN stage 3 run on the demo's stage 2)."""
    metas = Build(demo / "data").split("test").metas
    refs = {m["clip_id"]: m["captions"] for m in metas}
    objects = {m["clip_id"]: m["objects"] for m in metas if m.get("objects")}
    run = RunFolder(demo / "run")
    stages = {s: load_eval(run.stage(RECIPE_OF[s]).eval_dir("test", beam), refs, objects, scorer) for s in STAGES}
    if control is not None:
        stages[FROZEN] = load_eval(RunFolder(control).stage("e2e").eval_dir("test", beam), refs, objects, scorer)
    probe = demo / "run" / "probe.json"
    return {"demo": str(demo), "objects": objects, "stages": stages, "references": references_agreement(refs, scorer),
            "probe": json.loads(probe.read_text())["probes"] if probe.exists() else None}


def references_agreement(refs: dict[str, list[str]], scorer: Scorer) -> dict:
    """CIDEr of each reference against the clip's other references: the mean over all of them, and
    the mean over clips of the best one. A captioner that names every slot right still cannot know
    which of the equally valid phrasings a clip's references drew, so its CIDEr sits between the two."""
    preds, others = {}, {}
    for c, caps in refs.items():
        if len(caps) < 2:
            continue
        for j, cap in enumerate(caps):
            preds[f"{c}#{j}"], others[f"{c}#{j}"] = cap, caps[:j] + caps[j + 1:]
    scores = scorer.score(preds, others, per_clip=True)
    best: dict[str, float] = {}
    for key, v in scores["per_clip"].items():
        c = key.rsplit("#", 1)[0]
        best[c] = max(best.get(c, float("-inf")), v["CIDEr"])
    return {"clips": len(best), "leave_one_out_cider": scores["CIDEr"], "best_reference_cider": float(np.mean(list(best.values())))}


def paired(seeds: list[dict], a: int | str, b: int | str) -> dict:
    """Stage b - stage a per measure: per seed and pooled over every seed's clips (keys made unique)."""
    out = {}
    for measure in ("cider", *SLOTS):
        per_seed = [paired_difference(sd["stages"][a][measure], sd["stages"][b][measure]) for sd in seeds]
        pool_a = {(i, c): v for i, sd in enumerate(seeds) for c, v in sd["stages"][a][measure].items()}
        pool_b = {(i, c): v for i, sd in enumerate(seeds) for c, v in sd["stages"][b][measure].items()}
        mean, se = paired_difference(pool_a, pool_b)
        out[measure] = {"mean": mean, "se": se, "per_seed": [{"mean": m, "se": e} for m, e in per_seed]}
        if measure in SLOTS:  # correctness is 0/1 (None where a clip has no truth)
            both = [k for k in pool_a if pool_a[k] is not None and pool_b.get(k) is not None]
            out[measure].update(wrong_before=sum(not pool_a[k] for k in both),
                                fixed=sum(not pool_a[k] and bool(pool_b[k]) for k in both),
                                broken=sum(bool(pool_a[k]) and not pool_b[k] for k in both))
    return out


def by_objects(seeds: list[dict], stage: int | str) -> dict:
    """Slot accuracy on one- and two-object clips, pooled; colour errors that name another object's colour."""
    out = {}
    for n_obj in (1, 2):
        right = {slot: 0 for slot in SLOTS}
        clips = other_colour = colour_wrong = 0
        for sd in seeds:
            st = sd["stages"][stage]
            for c, objs in sd["objects"].items():
                if len(objs) != n_obj or c not in st["predictions"]:
                    continue
                clips += 1
                for slot in SLOTS:
                    right[slot] += int(bool(st[slot][c]))
                if not st["colour"][c]:
                    colour_wrong += 1
                    said = st["said_colour"][c]
                    other_colour += int(said is not None and any(o["colour"] == said for o in objs[1:]))
        out[f"{n_obj}_object"] = {"clips": clips, **{f"{s}_acc": right[s] / clips if clips else None for s in SLOTS},
                                  "colour_errors": colour_wrong, "colour_errors_naming_another_object": other_colour}
    return out


def probes(seeds: list[dict]) -> dict:
    """`train probe` per slot and input: stage-2 and stage-3 CNN, mean / std over seeds."""
    found = [sd["probe"] for sd in seeds if sd["probe"]]
    out: dict = {}
    for label, stage in (("stage2", 2), ("stage3", 3)):
        runs = []
        for p in found:
            (ckpt,) = [k for k in p if Path(k).parent.name == RECIPES[RECIPE_OF[stage]].dir]
            runs.append({f"{slot}/{inp}": acc for slot, by_input in p[ckpt].items() for inp, acc in by_input.items()})
        out[label] = over_seeds(runs, sorted({k for r in runs for k in r}))
    return out


def summarise(seeds: list[dict]) -> dict:
    rows = [*STAGES, FROZEN] if all(FROZEN in sd["stages"] for sd in seeds) else list(STAGES)
    table = [{"stage": s, **over_seeds([sd["stages"][s]["metrics"] for sd in seeds], [k for k, _, _ in COLUMNS])}
             for s in rows]
    pairs = {"2-1": (1, 2), "3-2": (2, 3), "3-1": (1, 3)}
    if FROZEN in rows:
        pairs.update({f"{FROZEN}-2": (2, FROZEN), f"3-{FROZEN}": (FROZEN, 3)})
    labels = seeds[0]["stages"][3]["confusion"]["labels"]
    matrix = np.sum([sd["stages"][3]["confusion"]["matrix"] for sd in seeds], axis=0)
    refs = [sd["references"] for sd in seeds]
    return {"demos": [sd["demo"] for sd in seeds], "table": table,
            "references": {**over_seeds(refs, ["leave_one_out_cider", "best_reference_cider"]), "per_seed": refs},
            "paired": {name: paired(seeds, a, b) for name, (a, b) in pairs.items()},
            "by_objects": {s: by_objects(seeds, s) for s in rows},
            "confusion_stage3": {"labels": labels, "matrix": matrix.tolist()}, "probes": probes(seeds)}


def format_markdown(report: dict) -> str:
    n = len(report["demos"])
    lines = [f"# make demo over {n} seed(s): test split, beam {report['beam']}", "",
             "| after | " + " | ".join(t for _, t, _ in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for row in report["table"]:
        cells = [f"{scale * row[k]['mean']:.1f} ± {scale * row[k]['std']:.1f}" for k, _, scale in COLUMNS]
        lines.append(f"| stage {row['stage']} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences (mean ± standard error over clips; CIDEr ×100, accuracies in points):", "",
              "| difference | measure | pooled | SEs | per seed |", "|---|---|---|---|---|"]
    for name, by_measure in report["paired"].items():
        for measure, d in by_measure.items():
            k = 100
            per = ", ".join(f"{k * p['mean']:+.1f} ± {k * p['se']:.1f}" for p in d["per_seed"])
            ses = d["mean"] / d["se"] if d["se"] else float("nan")
            counts = (f" (wrong before: {d['wrong_before']}; fixed {d['fixed']}, broke {d['broken']})"
                      if "fixed" in d else "")
            lines.append(f"| stage {name} | {measure}{counts} | {k * d['mean']:+.1f} ± {k * d['se']:.1f} | {ses:.1f} "
                         f"| {per} |")
    ref = report["references"]
    lines += ["", "The references' agreement with each other (CIDEr ×100, mean ± std over seeds): each reference "
              f"against the clip's others {100 * ref['leave_one_out_cider']['mean']:.1f} ± "
              f"{100 * ref['leave_one_out_cider']['std']:.1f}; the best reference of each clip "
              f"{100 * ref['best_reference_cider']['mean']:.1f} ± {100 * ref['best_reference_cider']['std']:.1f}."]
    lines += ["", "| after | clips | n | action % | colour % | shape % | colour errors (naming another object) |",
              "|---|---|---|---|---|---|---|"]
    for s, groups in report["by_objects"].items():
        for g, v in groups.items():
            if v["clips"]:
                lines.append(f"| stage {s} | {g.replace('_', ' ')} | {v['clips']} | {100 * v['action_acc']:.1f} | "
                             f"{100 * v['colour_acc']:.1f} | {100 * v['shape_acc']:.1f} | {v['colour_errors']} "
                             f"({v['colour_errors_naming_another_object']}) |")
    conf = report["confusion_stage3"]
    labels = conf["labels"]
    lines += ["", "Stage-3 action confusion, seeds pooled (rows: the clip's action; columns: the caption's):", "",
              "| true \\ said | " + " | ".join([*labels, "none"]) + " | acc |", "|---|" + "---|" * (len(labels) + 2)]
    for lab, row in zip(labels, conf["matrix"], strict=True):
        acc = row[labels.index(lab)] / sum(row) if sum(row) else float("nan")
        lines.append(f"| **{lab}** | " + " | ".join(str(v) if v else "·" for v in row) + f" | {100 * acc:.0f}% |")
    if report["probes"]["stage2"]:
        lines += ["", "`train probe` (test split), mean ± std over seeds:", "",
                  "| slot / probe input | stage-2 CNN | stage-3 CNN |", "|---|---|---|"]
        for key, v2 in report["probes"]["stage2"].items():
            v3 = report["probes"]["stage3"][key]
            lines.append(f"| {key} | {100 * v2['mean']:.1f} ± {100 * v2['std']:.1f} | "
                         f"{100 * v3['mean']:.1f} ± {100 * v3['std']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("demos", nargs="+", help="DEMO folders of `make demo DEMO=... SEED=...`")
    p.add_argument("--beam", type=int, default=3, help="which eval-test-beamN of each stage to read")
    p.add_argument("--control", nargs="+", default=None, metavar="RUN",
                   help="one run folder per DEMO, in the same order, each holding stage3/ trained by stage 3's "
                        "recipe from that demo's stage-2 best.pt with the CNN frozen (README: the command)")
    p.add_argument("--out", default=str(REPO / "bench" / "demo_seeds_report.json"))
    a = p.parse_args(argv)
    if a.control is not None and len(a.control) != len(a.demos):
        p.error(f"--control: {len(a.control)} run folders for {len(a.demos)} demos; give one per demo")
    controls = [Path(c) for c in a.control] if a.control else [None] * len(a.demos)
    with Scorer(meteor=False) as scorer:
        seeds = [load_seed(Path(d), a.beam, scorer, c) for d, c in zip(a.demos, controls, strict=True)]
    report = {"beam": a.beam, **summarise(seeds)}
    write_json_atomic(Path(a.out), report)
    write_bytes_atomic(Path(a.out).with_suffix(".md"), format_markdown(report).encode())
    print(format_markdown(report))
    return report


if __name__ == "__main__":
    main()
