"""bench/demo_seeds.py (the README's multi-seed demo tables) on hand-made predictions over a real
build: per-stage means, paired differences with their standard errors, the one-/two-object split,
the pooled confusion matrix and the probes, each checked against numbers computed by hand."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
from conftest import REPO

from vidcap.evalkit.grounding import slot_accuracy
from vidcap.grammar import ACTION_WORDS, SHAPE_WORDS
from vidcap.shards.layout import Build


def _bench():
    spec = importlib.util.spec_from_file_location("demo_seeds", REPO / "bench" / "demo_seeds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_demo(root, built, stage_predictions, cider_by_stage, objects):
    """A folder shaped like `make demo`'s outputs: data/ (the real build) and each stage's test eval,
    its action confusion written by evalkit as `train eval` writes it."""
    root.mkdir()
    (root / "data").symlink_to(built)
    for s, preds in stage_predictions.items():
        d = root / "run" / f"stage{s}" / "eval-test-beam3"
        d.mkdir(parents=True)
        (d / "predictions.json").write_text(json.dumps(preds))
        (d / "action_confusion.json").write_text(json.dumps(slot_accuracy(preds, objects)["confusion"]))
        (d / "metrics.json").write_text(json.dumps({"CIDEr": cider_by_stage[s], "Bleu_4": 0.5, "METEOR": 0.3,
                                                    "action_acc": 0.1 * s, "colour_acc": 0.2, "shape_acc": 0.3}))
    probe = {str(root / "run" / f"stage{s}" / "best.pt"): {"colour": {"mean": 0.5 + 0.1 * s}} for s in (2, 3)}
    (root / "run" / "probe.json").write_text(json.dumps({"split": "test", "probes": probe}))
    return root


def test_demo_seeds_aggregates_hand_made_predictions(built_small, tmp_path):
    metas = Build(built_small).split("test").metas
    ids = [m["clip_id"] for m in metas]
    def say(o, action=True):  # an object's colour and shape (and action), in the grammar's words
        words = f"a {o['colour']} {SHAPE_WORDS[o['shape']][0]}"
        return f"{words} {ACTION_WORDS[o['action']][0][0]}" if action else words

    objects = {m["clip_id"]: m["objects"] for m in metas}
    right = {c: say(objs[0]) for c, objs in objects.items()}
    # stage 1 names no action, and on two-object clips the still object's colour and shape; stage 2
    # is right on the first half of the clips and names nothing on the rest; stage 3 is right on all.
    half = set(ids[: len(ids) // 2])
    stages = {1: {c: say(objs[-1], action=False) if len(objs) == 2 else "a video" for c, objs in objects.items()},
              2: {c: right[c] if c in half else "a video" for c in ids},
              3: right}
    demos = [_fake_demo(tmp_path / f"demo{i}", built_small, stages, {1: 1.0 + i, 2: 1.5 + i, 3: 2.0 + i}, objects)
             for i in range(2)]
    # the frozen-CNN control of stage 3 (a run folder beside each demo), here saying what stage 2 says
    controls = []
    for i in range(2):
        d = tmp_path / f"control{i}" / "stage3" / "eval-test-beam3"
        d.parent.parent.mkdir()
        (d.parent).symlink_to(demos[i] / "run" / "stage2")
        controls.append(d.parent.parent)
    bench = _bench()
    report = bench.main([*map(str, demos), "--control", *map(str, controls), "--out", str(tmp_path / "report.json")])

    cider = {row["stage"]: row["CIDEr"] for row in report["table"]}
    assert cider[1]["values"] == [1.0, 2.0] and math.isclose(cider[1]["std"], math.sqrt(0.5))
    # stage 2 - stage 1 on the action: +1 on half the clips, 0 on the rest; pooled over both seeds.
    n, k = 2 * len(ids), 2 * len(half)
    p = k / n
    d = report["paired"]["2-1"]["action"]
    assert math.isclose(d["mean"], p) and math.isclose(d["se"], math.sqrt(p * (1 - p) / (n - 1)))
    assert [x["mean"] for x in d["per_seed"]] == [len(half) / len(ids)] * 2
    assert (d["wrong_before"], d["fixed"], d["broken"]) == (n, k, 0)
    d = report["paired"]["3-2"]["action"]
    assert (d["wrong_before"], d["fixed"], d["broken"]) == (n - k, n - k, 0)
    two = [objs for objs in objects.values() if len(objs) == 2]
    assert two, "the fixture's test split should hold a two-object clip"
    stage1_right = {"colour": sum(o[0]["colour"] == o[1]["colour"] for o in two),
                    "shape": sum(o[0]["shape"] == o[1]["shape"] for o in two), "action": 0}
    for slot, r in stage1_right.items():
        d = report["paired"]["3-1"][slot]
        assert math.isclose(d["mean"], 1 - r / len(ids))
    assert report["paired"]["3-2"]["cider"]["mean"] > 0  # right captions score above "a video"

    frozen = bench.FROZEN
    assert [row["stage"] for row in report["table"]] == [1, 2, 3, frozen]
    for measure in ("cider", "action", "colour", "shape"):
        assert report["paired"][f"3-{frozen}"][measure]["mean"] == report["paired"]["3-2"][measure]["mean"]
        assert report["paired"][f"{frozen}-2"][measure]["mean"] == 0
    with pytest.raises(SystemExit):  # one control per demo
        bench.main([*map(str, demos), "--control", str(controls[0]), "--out", str(tmp_path / "r.json")])

    groups = report["by_objects"]
    assert groups[3]["1_object"]["clips"] == n - 2 * len(two) and groups[3]["2_object"]["clips"] == 2 * len(two)
    assert groups[3]["1_object"]["colour_acc"] == groups[3]["2_object"]["colour_acc"] == 1.0
    assert groups[1]["1_object"]["colour_errors"] == n - 2 * len(two)  # "a video" names no colour
    assert groups[1]["1_object"]["colour_errors_naming_another_object"] == 0
    assert groups[1]["2_object"]["colour_errors_naming_another_object"] == 2 * (len(two) - stage1_right["colour"])

    matrix = report["confusion_stage3"]["matrix"]
    labels = report["confusion_stage3"]["labels"]
    assert sum(map(sum, matrix)) == n and sum(matrix[i][i] for i in range(len(labels))) == n
    assert math.isclose(report["probes"]["stage3"]["colour/mean"]["mean"], 0.8)
    # the references against each other: the same build twice, so both seeds agree; the best
    # reference of a clip scores at least the mean of its references.
    ref = report["references"]
    assert ref["per_seed"][0] == ref["per_seed"][1] and ref["per_seed"][0]["clips"] == len(ids)
    assert ref["best_reference_cider"]["mean"] >= ref["leave_one_out_cider"]["mean"] > 0
    table = (tmp_path / "report.md").read_text()
    assert "| stage 3 | 250.0 ± 70.7 |" in table and f"| stage 2-1 | action (wrong before: {n}; fixed {k}, broke 0) |" in table
    assert "the best reference of each clip" in table
