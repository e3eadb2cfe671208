"""The results reporter, bench/results/real_world_seeds.py (the README's realistic-world tables and its
robustness figure), on hand-made demo folders over a real build: per-stage means over seeds, paired
stage differences with fixed / broken clips, the --against comparison, the per-nuisance pooling, the
robustness means and the README figure written where --figure says -- each against numbers computed
by hand."""

from __future__ import annotations

import json
import math

import pytest

from bench.results import real_world_seeds as reporter
from vidcap.grammar import ACTION_WORDS, SHAPE_WORDS
from vidcap.shards.layout import Build

ACC = ("action_acc", "colour_acc", "shape_acc", "all_acc")


def _say(o: dict) -> str:
    """An object's caption in the grammar's words: colour, shape, action."""
    return f"a {o['colour']} {SHAPE_WORDS[o['shape']][0]} {ACTION_WORDS[o['action']][0][0]}"


def _fake_demo(root, built, predictions: dict, cider: dict, rob_action: float):
    """A folder shaped like `make demo`'s outputs: data/ (the real build), per stage the realistic
    test eval (predictions, metrics, grounded groups) and the clean-world one, and stage 3's
    `train robustness` table."""
    (root / "run").mkdir(parents=True)
    (root / "data").symlink_to(built)
    for s, preds in predictions.items():
        d = root / "run" / f"stage{s}"
        (d / "eval-test-beam3").mkdir(parents=True)
        (d / "eval-clean-test-beam3").mkdir()
        metrics = {"CIDEr": cider[s], **{k: 0.1 * s for k in ACC}}
        (d / "eval-test-beam3" / "predictions.json").write_text(json.dumps(preds))
        (d / "eval-test-beam3" / "metrics.json").write_text(json.dumps(metrics))
        (d / "eval-clean-test-beam3" / "metrics.json").write_text(json.dumps({**metrics, "CIDEr": 2 * cider[s]}))
        groups = {"seen": {"clips": 6, **{k: 0.5 for k in ACC}}, "unseen": {"clips": 2, **{k: 0.25 * s for k in ACC}},
                  "noise": {"clips": 4, **{k: 1.0 for k in ACC}}}
        (d / "eval-test-beam3" / "grounded_groups.json").write_text(json.dumps(groups))
    rows = [{"nuisance": "clean", "strength": None, "held_out": False, **{k: 0.9 for k in ACC}, "CIDEr": 1.5},
            {"nuisance": "blur", "strength": "standard", "held_out": True,
             **{k: rob_action for k in ACC}, "CIDEr": 1.0}]
    (root / "run" / "stage3" / "robustness").mkdir()
    (root / "run" / "stage3" / "robustness" / "robustness.json").write_text(json.dumps({"rows": rows}))
    return root


def test_real_world_seeds_reports_hand_made_demos(built_small, tmp_path):
    metas = Build(built_small).split("test").metas
    objects = {m["clip_id"]: m["objects"] for m in metas if m.get("objects")}
    ids = sorted(objects)
    assert len(ids) >= 4, "the fixture's test split should hold a few clips with objects"
    right = {c: _say(objects[c][0]) for c in ids}
    half = set(ids[: len(ids) // 2])
    # stage 1 names nothing; stage 2 is right on the first half and names nothing on the rest;
    # stage 3 is right on all clips.
    stages = {1: {c: "a video" for c in ids}, 2: {c: right[c] if c in half else "a video" for c in ids}, 3: right}
    demos = [_fake_demo(tmp_path / f"demo{i}", built_small, stages, {1: 1.0 + i, 2: 1.5 + i, 3: 2.0 + i}, 0.6 + 0.2 * i)
             for i in range(2)]
    # the --against demos: the same seeds with another setting, here right on every clip from stage 2 on
    others = [_fake_demo(tmp_path / f"other{i}", built_small, {1: stages[1], 2: right, 3: right},
                         {1: 1.0, 2: 1.0, 3: 1.0}, 0.5) for i in range(2)]
    out = tmp_path / "report.json"
    figure = tmp_path / "img" / "robustness.png"
    figure.parent.mkdir()
    report = reporter.main([*map(str, demos), "--against", *map(str, others), "--out", str(out),
                            "--figure", str(figure)])

    cider = {row["stage"]: row["realistic"]["CIDEr"] for row in report["per_stage"]}
    assert cider[1]["values"] == [1.0, 2.0] and math.isclose(cider[1]["std"], math.sqrt(0.5))
    assert report["per_stage"][1]["clean"]["CIDEr"]["values"] == [3.0, 5.0]  # stage 2: twice 1.5 and 2.5
    assert math.isclose(report["per_stage"][0]["unseen"]["action_acc"]["mean"], 0.25)  # stage 1

    # stage 2 - stage 1 on the action: +1 on half the clips, 0 on the rest; both seeds' clips pooled.
    n, k = 2 * len(ids), 2 * len(half)
    p = k / n
    d = report["paired"]["2 - 1"]["action"]
    assert math.isclose(d["diff"], 100 * p) and math.isclose(d["se"], 100 * math.sqrt(p * (1 - p) / (n - 1)))
    assert (d["fixed"], d["broken"]) == (k, 0)
    d = report["paired"]["3 - 2"]["all"]
    assert (d["fixed"], d["broken"]) == (n - k, 0) and math.isclose(d["diff"], 100 * (n - k) / n)
    assert report["paired"]["3 - 1"]["CIDEr"]["diff"] > 0  # right captions score above "a video"

    # these demos minus the --against ones: stage 2 loses the second half, stage 3 is the same
    against = report["against"]["per_stage"]
    assert (against["2"]["action"]["fixed"], against["2"]["action"]["broken"]) == (0, n - k)
    assert against["3"]["action"]["diff"] == 0 and against["3"]["CIDEr"]["diff"] == 0

    # per nuisance: clips pooled over the two seeds, accuracies weighted by clips
    assert report["stage3_by_nuisance"]["noise"] == {"clips": 8, **{k: 1.0 for k in ACC}}
    assert report["stage3_by_nuisance"]["unseen"]["clips"] == 4

    blur = report["robustness"][1]
    assert blur["nuisance"] == "blur" and blur["held_out"]
    assert math.isclose(blur["action_acc"]["mean"], 0.7) and blur["action_acc"]["values"] == [0.6, 0.8]

    table = out.with_suffix(".md").read_text()
    assert "| stage 1 | realistic | 150.0 ± 70.7 |" in table and "| blur * | standard | 70.0 ± 14.1 |" in table
    assert f"{k} fixed, 0 broken" in table
    for png in (out.with_suffix(".png"), figure):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(SystemExit):  # one --against demo per seed
        reporter.main([*map(str, demos), "--against", str(others[0]), "--out", str(tmp_path / "r.json")])

