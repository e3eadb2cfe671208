"""The nuisance table (pipeline/nuisances.py), entry by entry: the realistic world's renderer and
`train robustness`'s perturbation both run it and give the same pixels from the same draw; its
strengths grow its effect; the world draws it at its rate and in its range, and the shard json
records it in the unit `train robustness` reports; no other file spells a nuisance's name; the
documentation's table is the code's."""

from __future__ import annotations

import ast
import copy
import re
import subprocess

import numpy as np
import pytest
from conftest import REPO, tool

from vidcap.pipeline import footage, nuisances
from vidcap.pipeline.nuisances import HELD_OUT, LISTED, NUISANCES, perturb, sampled_times
from vidcap.pipeline.synth import make_specs, nuisance_record, render_clip

K = 5  # the frames a build samples


@pytest.fixture(scope="module")
def quiet():
    """A realistic clip with every nuisance off (a photo behind: texture for the camera's moves)."""
    spec = copy.deepcopy(next(s for s in make_specs(60, 11, "real") if s.objects[0].action == "right"))
    spec.real.update(nuisances={}, background={"kind": "photo", "image": "brick", "crop": [0.0, 0.0, 1.0, 1.0],
                                               "flip": False})
    spec.objects = spec.objects[:1]
    return spec


def _world(spec, name: str, strength: float, seed: int) -> np.ndarray:
    """The world's K sampled frames of `spec` with nuisance `name` drawn as `perturb` draws it."""
    s = copy.deepcopy(spec)
    s.real["nuisances"] = {name: NUISANCES[name].draw(strength, np.random.default_rng(seed), None)}
    return render_clip(s, list(sampled_times(K)))


@pytest.mark.parametrize("name", list(NUISANCES))
def test_an_entry_is_whole(name):
    n = NUISANCES[name]
    assert n.what and n.unit and n.kind in nuisances.KINDS and len(n.strengths) == 3
    assert list(n.strengths) in (sorted(n.strengths), sorted(n.strengths, reverse=True))  # jpeg: quality falls
    if n.world is not None:
        assert 0 < n.world.rate <= 1 and 0 < n.world.low < n.world.high <= max(n.strengths)


@pytest.mark.parametrize("name", list(NUISANCES))
def test_the_effect_grows_with_the_strength_and_is_seeded(name):
    if NUISANCES[name].kind == "backdrop" and not footage.sources(None, held_out=True):
        pytest.skip("no held-out footage (../shared/data/videos)")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (K, 48, 64, 3), dtype=np.uint8)
    frames[:, 10:30, 12:40] = 200  # some structure for the geometric ones
    effect = [np.mean([np.abs(perturb(frames, name, v, seed).astype(float) - frames).mean() for seed in range(4)])
              for v in NUISANCES[name].strengths]
    assert effect[0] > 0 and effect[0] <= effect[1] + 1e-9 and effect[1] <= effect[2] + 1e-9, effect
    assert np.array_equal(perturb(frames, name, NUISANCES[name].standard, 7),
                          perturb(frames, name, NUISANCES[name].standard, 7))


@pytest.mark.parametrize("name", list(LISTED))
def test_the_world_and_train_robustness_apply_one_implementation(quiet, name):
    """The same draw (seed), rendered by the world in its scene and applied by `perturb` to the world's
    own quiet frames: the same pixels, except near the edges where the world's camera sees more scene
    (and sensor noise, drawn from another stream: the same sigma)."""
    n, strength, seed = NUISANCES[name], NUISANCES[name].standard, 5
    plain = render_clip(quiet, list(sampled_times(K)))
    world = _world(quiet, name, strength, seed).astype(np.float32)
    robust = perturb(plain, name, strength, seed, quiet.real["seconds"]).astype(np.float32)
    assert not np.array_equal(world, plain) and not np.array_equal(robust, plain)
    if name == "noise":
        for got in (world, robust):
            assert abs(float((got - plain).std()) - strength) < 0.15 * strength
        return
    if n.kind == "camera":  # the edges: what a moved camera brings into view
        w = plain.shape[2]
        offsets, scales = n.camera(n.draw(strength, np.random.default_rng(seed), None), sampled_times(K))
        edge = int(np.ceil(np.abs(offsets).max() * w + w * np.abs(1 - 1 / scales).max() / 2)) + 2
        world, robust = world[:, edge:-edge, edge:-edge], robust[:, edge:-edge, edge:-edge]
    differ = np.abs(world - robust).max(-1) > 1
    assert differ.mean() < 0.01, (name, float(differ.mean()))


def test_the_world_draws_each_listed_nuisance_at_its_rate_in_its_range_and_records_that_strength():
    specs = make_specs(400, 2, "real")
    seen = {name: [] for name in LISTED}
    for s in specs:
        rec = nuisance_record(s)
        assert set(rec) - set(LISTED) <= {"background", "distractor"}
        for name in LISTED.keys() & rec.keys():
            assert rec[name] == round(s.real["nuisances"][name]["strength"], 4)  # the draw's, as robustness reads it
            seen[name].append(rec[name])
    for name, values in seen.items():
        world = LISTED[name].world
        assert abs(len(values) / len(specs) - world.rate) < 0.08, name
        assert world.low - 1e-4 <= min(values) and max(values) <= world.high + 1e-4, name
    assert not HELD_OUT.keys() & {k for s in specs for k in s.real["nuisances"]}


def test_a_new_nuisance_is_one_entry_rendered_by_the_world(quiet, monkeypatch):
    """An entry added to the table (here: a fake, in place) is rendered by the world without another edit."""
    inverted = nuisances.Nuisance("invert", "negative film", "share", (0.2, 0.5, 1.0), "sensor",
                                  nuisances.World(1.0, 0.5, 0.5), nuisances._plain,
                                  pixels=lambda f, p, t, s, r: f * (1 - p["strength"]) + (255 - f) * p["strength"])
    monkeypatch.setitem(NUISANCES, "invert", inverted)
    s = copy.deepcopy(quiet)
    s.real["nuisances"] = {"invert": inverted.draw(0.5, np.random.default_rng(0), None)}
    assert np.abs(render_clip(s, [0.5]).astype(float) - 127.5).max() <= 0.5
    assert nuisances.record(s.real["nuisances"]) == {"invert": 0.5}


def test_only_the_table_spells_a_nuisance_name():
    """Every list of nuisances in the packages derives from the table: no string literal elsewhere is
    a nuisance's name (or a comma-separated list of them)."""
    found = []
    for pkg in ("vidcap", "shards", "evalkit", "pipeline", "model", "train", "caption"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            if path == REPO / "pipeline" / "nuisances.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                        any(part in NUISANCES for part in node.value.split(",")):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not found, found


def test_the_help_offers_every_nuisance_from_the_table():
    r = subprocess.run([tool("train"), "robustness", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and ",".join(NUISANCES) in "".join(r.stdout.split()), r.stdout  # argparse wraps anywhere


def test_the_documented_table_is_the_code_s():
    """docs/real-world.md's nuisance table: a row per entry, its unit, rate, range and strengths."""
    lines = (REPO / "docs" / "real-world.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("<!-- the nuisance table: tests/test_nuisances.py -->") + 3
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    assert list(rows) == list(NUISANCES)

    def numbers(text: str) -> list[float]:
        return [float(v) for v in re.findall(r"\d+(?:\.\d+)?", text)]
    for name, (_, kind, unit, share, drawn, strengths, _what) in rows.items():
        n = NUISANCES[name]
        assert (kind, unit) == (n.kind, n.unit), name
        assert numbers(strengths) == list(n.strengths), name
        if n.world is None:
            assert share == drawn == "held out", name
        else:
            assert numbers(share) == [round(100 * n.world.rate)] and numbers(drawn) == [n.world.low, n.world.high], name
