"""Real moving scenes (issue 37) behind the realistic world's objects (pipeline/footage.py) -- the scene
moves by itself, each clip's draw is recorded in videodatainfo.json, the shard json and `pipeline
inspect`; the held-out footage never enters the world; without the footage folder the world falls
back to photographs and says so in one line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_BUILD
from PIL import Image

from vidcap.pipeline import footage
from vidcap.pipeline.nuisances import NUISANCES, perturb, sampled_times
from vidcap.pipeline.synth import COLOURS, make_specs, nuisance_record, render_clip, render_frame, synthesize

pytestmark = pytest.mark.skipif(not (footage.sources(None) and footage.sources(None, held_out=True)),
                                reason=f"no footage in {footage.DEFAULT_FOLDER}")
TIMES = [0.1, 0.3, 0.5, 0.7, 0.9]


def _footage_spec(seed: int = 9):
    return next(s for s in make_specs(12, seed, "real") if s.real["background"]["kind"] == "footage")


def test_a_real_scene_moves_behind_a_still_camera_where_a_photograph_does_not():
    """Nuisances off, the camera at rest: what changes away from the objects is the footage itself."""
    spec = copy.deepcopy(_footage_spec())
    spec.real["nuisances"] = {}
    spec.real["background"].update(speed=1.0)
    still = copy.deepcopy(spec)
    still.real["background"] = {"kind": "photo", "image": "brick", "crop": [0.0, 0.0, 1.0, 1.0], "flip": False}

    def background_change(s) -> float:
        frames = render_clip(s, TIMES).astype(np.float32)
        objects = np.zeros(frames.shape[1:3], bool)  # every pixel an object colour covers in some frame
        for o in s.objects:
            objects |= (np.abs(frames - np.float32(COLOURS[o.colour])).sum(-1) < 60).any(0)
        return float(np.abs(np.diff(frames, axis=0)).mean(-1)[:, ~objects].mean())

    assert background_change(still) < 0.5
    assert background_change(spec) > 5.0  # grey levels per pixel between sampled frames
    assert nuisance_record(spec)["background"] == "footage:" + Path(spec.real["background"]["source"]).stem


def test_each_clip_draws_its_own_scene_from_the_world_sources_only():
    specs = make_specs(1200, 0, "real")
    scenes = [s.real["background"] for s in specs if s.real["background"]["kind"] == "footage"]
    assert 0.3 < len(scenes) / len(specs) < 0.4  # REAL_BACKGROUNDS' 35%
    assert {b["source"] for b in scenes} == set(footage.WORLD_SOURCES)
    assert not set(footage.WORLD_SOURCES) & set(footage.HELD_OUT_SOURCES)
    draws = {(b["source"], b["offset"], b["speed"], tuple(b["crop"]), b["flip"]) for b in scenes}
    assert len(draws) == len(scenes)  # a few sources, many scenes
    assert {b["flip"] for b in scenes} == {True, False}
    speeds = [b["speed"] for b in scenes]
    assert min(speeds) < 0.7 and max(speeds) > 1.5
    for b in scenes:  # the clip's span of source time lies inside the source
        _w, _h, _fps, duration = footage.sources(None)[b["source"]]
        seconds = next(s.real["seconds"] for s in specs if s.real["background"] is b)
        assert 0 <= b["offset"] and b["offset"] + seconds * b["speed"] <= duration + 1e-6


def test_the_held_out_footage_never_enters_the_world(tmp_path):
    """Only the world's sources are ever drawn: a folder holding only the held-out footage gives no
    real scenes at all, and the held-out sources are listed only when asked for."""
    only_held_out = tmp_path / "held"
    only_held_out.mkdir()
    for name in footage.HELD_OUT_SOURCES:
        (only_held_out / name).symlink_to(footage.DEFAULT_FOLDER / name)
    assert footage.sources(only_held_out) == {}
    assert set(footage.sources(only_held_out, held_out=True)) == set(footage.HELD_OUT_SOURCES)
    assert set(footage.sources(None)) == set(footage.WORLD_SOURCES)
    kinds = {s.real["background"]["kind"] for s in make_specs(40, 3, "real", footage_folder=only_held_out)}
    assert "footage" not in kinds
    for s in make_specs(400, 5, "real"):
        assert s.real["background"].get("source") not in footage.HELD_OUT_SOURCES


def test_without_the_footage_folder_the_world_falls_back_to_photographs_in_one_line(tmp_path, capfd):
    missing = tmp_path / "no-shared"
    with_footage = make_specs(12, 9, "real")
    fallback = make_specs(12, 9, "real", footage_folder=missing)
    swapped = [i for i, s in enumerate(with_footage) if s.real["background"]["kind"] == "footage"]
    assert swapped
    for a, b in zip(with_footage, fallback, strict=True):
        if a.index in swapped:
            assert b.real["background"]["kind"] == "photo"
        else:
            assert a.real["background"] == b.real["background"]
        # the footage's draw has a stream of its own: everything else about the clip is the same
        assert (a.objects, a.captions) == (b.objects, b.captions)
        assert {k: v for k, v in a.real.items() if k != "background"} == {k: v for k, v in b.real.items() if k != "background"}
    capfd.readouterr()
    info = json.loads(synthesize(tmp_path / "w", clips=2, seed=9, world="real", workers=1, progress=False,
                                 footage_folder=missing).read_text())
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0] and "photographs" in err[0], err
    assert not any("footage" in v for v in info["videos"]) and info["vidcap_world"]["footage"] == {}


@pytest.fixture(scope="module")
def tiny_real(tmp_path_factory) -> tuple[Path, Path]:
    """Three clips of the realistic world, one in front of footage, built to shards."""
    from vidcap.pipeline.build import BuildConfig, build

    root = tmp_path_factory.mktemp("footage") / "ds"
    synthesize(root, clips=3, seed=9, world="real", workers=1, progress=False)
    out = root.parent / "out"
    build(BuildConfig(dataset="msrvtt", root=str(root), out=str(out), workers=1, **SMALL_BUILD))
    return root, out


def test_the_scene_is_recorded_in_videodatainfo_the_shard_json_and_inspect(tiny_real):
    from vidcap.pipeline.inspect_out import inspect
    from vidcap.shards.layout import Build
    from vidcap.shards.reader import iter_samples

    root, out = tiny_real
    info = json.loads((root / "videodatainfo.json").read_text())
    recorded = {v["video_id"]: v["footage"] for v in info["videos"] if "footage" in v}
    assert recorded and all({"source", "offset", "speed", "crop", "flip"} <= set(r) for r in recorded.values())
    assert set(info["vidcap_world"]["footage"]) == {r["source"] for r in recorded.values()}
    assert info["vidcap_world"]["footage_held_out"] == list(footage.HELD_OUT_SOURCES)
    build = Build(out)
    in_shards = {}
    for split in ("train", "val", "test"):
        data = build.split(split)
        for ref in data.refs:
            for s in iter_samples(build.store, ref, data.expect):
                if "footage" in s["json"]:
                    in_shards[s["json"]["clip_id"]] = s["json"]["footage"]
    assert in_shards == recorded
    text = inspect(out, n_samples=3, png=root.parent / "sheet.png")
    vid, rec = next(iter(recorded.items()))
    assert f"{vid}: {rec['source']} from {rec['offset']:g} s at {rec['speed']:g}x" in text


# ---- train robustness's real_scene: held-out footage behind a plain background ----------------------

BACKDROP = next(n for n, e in NUISANCES.items() if e.kind == "backdrop")


def _clean_frames(seed: int = 1, k: int = 5) -> tuple[list, np.ndarray]:
    """A clean-world clip's K sampled frames at 96 px, as `train robustness` decodes them (square)."""
    spec = make_specs(3, seed, "clean")[0]
    frames = np.stack([np.asarray(Image.fromarray(render_frame(spec, t, 160, 120)).resize((96, 96)))
                       for t in sampled_times(k)])
    return spec, frames


def test_real_scene_lays_held_out_footage_behind_the_objects_and_keeps_them():
    spec, frames = _clean_frames()
    out = perturb(frames, BACKDROP, NUISANCES[BACKDROP].strengths[2], 3, 2.0).astype(np.float32)
    assert np.array_equal(out, perturb(frames, BACKDROP, NUISANCES[BACKDROP].strengths[2], 3, 2.0))
    colour = np.float32(COLOURS[spec.objects[0].colour])
    on_object = np.abs(frames.astype(np.float32) - colour).max(-1) < 20
    grey = footage.object_alpha(frames)[..., 0] == 0
    assert on_object.sum() > 50 and grey.mean() > 0.5
    assert np.abs(out - frames)[on_object].max() < 8  # the objects are kept (a bilinear resize's edge: 0)
    assert np.abs(out - frames).mean(-1)[grey].mean() > 20  # the plain wall is gone
    moving = np.abs(np.diff(out, axis=0)).mean(-1)[grey[:-1] & grey[1:]].mean()
    assert moving > 3 and np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(-1)[grey[:-1] & grey[1:]].mean() < 0.5
    draw = NUISANCES[BACKDROP].draw(1.0, np.random.default_rng(3), None)
    assert draw["source"] in footage.HELD_OUT_SOURCES and NUISANCES[BACKDROP].held_out


def test_only_plain_backgrounds_take_a_real_scene():
    from vidcap.train.robustness import plain_background

    assert plain_background({"clip_id": "clean"})
    assert plain_background({"nuisances": {"background": "gradient", "noise": 4.0}})
    assert not plain_background({"nuisances": {"background": "gradient", "occlusion": 0.08}})
    assert not plain_background({"nuisances": {"background": "photo:brick"}})
    assert not plain_background({"nuisances": {"background": "footage:bikes"}, "footage": {"source": "bikes.mp4"}})


def test_robustness_scores_a_real_scene_on_the_same_clips_beside_their_clean_score(tiny_model, built_small, tmp_path):
    from vidcap.train.robustness import robustness

    result = robustness(str(tiny_model["ckpt"]), None, str(built_small), nuisances=[BACKDROP], levels=[2], beam=1,
                        out=str(tmp_path / "rob"), progress=False)
    clean, scene = result["rows"]
    assert scene["nuisance"] == BACKDROP and scene["held_out"] and scene["clips"] == result["clips"]
    assert scene["baseline"] == {k: clean[k] for k in scene["baseline"]}  # the clean world: every clip is plain
    assert f"| {BACKDROP} * ({result['clips']} plain clips) | strong | 1 |" in (tmp_path / "rob" / "robustness.md").read_text()


def test_a_malformed_footage_record_is_one_line_naming_the_file(tmp_path):
    from vidcap.errors import UserError
    from vidcap.pipeline.adapters import msrvtt
    from vidcap.shards.reader import footage_problem

    good = {"source": "bikes.mp4", "offset": 1.5, "speed": 0.8, "crop": [0.1, 0.0, 0.7, 0.9], "flip": True}
    assert footage_problem(good) is None
    assert "source string" in footage_problem({"speed": 1.0})
    assert "'speed'" in footage_problem({**good, "speed": float("nan")})
    assert "'crop'" in footage_problem({**good, "crop": list(range(9))})
    info = {"videos": [{"video_id": "video0", "split": "train", "footage": {"speed": 1.0}}],
            "sentences": [{"video_id": "video0", "caption": "a red circle moves left", "sen_id": 0}]}
    (tmp_path / "videodatainfo.json").write_text(json.dumps(info))
    with pytest.raises(UserError) as e:
        msrvtt(tmp_path)
    assert str(e.value) == (f"{tmp_path / 'videodatainfo.json'}: videos[0].footage: must be an object of at most "
                            "16 entries with a source string")
