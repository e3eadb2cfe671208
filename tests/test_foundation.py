"""The foundation: console scripts, the built-in dataset (determinism, layout, decoding, grounding), bad input."""

from __future__ import annotations

import colorsys
import json
import subprocess

import decord
import ffmpeg
import numpy as np
import pytest
from conftest import REPO, tool

from vidcap.pipeline.synth import ACTIONS, COLOURS, make_specs, synthesize

SCRIPTS = [["pipeline"], ["pipeline", "synth"], ["pipeline", "build"], ["pipeline", "inspect"], ["evalkit"],
           ["evalkit", "score"], ["train"], ["train", "eval"], ["train", "export"], ["caption"], ["caption", "serve"]]


@pytest.mark.parametrize("cmd", SCRIPTS, ids=" ".join)
def test_console_scripts_answer_help(cmd):
    r = subprocess.run([tool(cmd[0]), *cmd[1:], "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout


def test_pyproject_registers_exactly_the_tested_scripts():
    text = (REPO / "pyproject.toml").read_text()
    block = text.split("[project.scripts]")[1].split("[")[0]
    names = {line.split("=")[0].strip() for line in block.strip().splitlines() if "=" in line}
    assert names == {c[0] for c in SCRIPTS}


def _all_frames(path) -> np.ndarray:
    return decord.VideoReader(str(path)).get_batch(list(range(48))).asnumpy()


def test_synth_is_deterministic(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        synthesize(out, clips=6, seed=seed, workers=2, progress=False)
    assert (a / "videodatainfo.json").read_bytes() == (b / "videodatainfo.json").read_bytes()
    for i in range(6):
        assert np.array_equal(_all_frames(a / "videos" / f"video{i}.mp4"), _all_frames(b / "videos" / f"video{i}.mp4"))
    ja, jc = (json.loads((d / "videodatainfo.json").read_text()) for d in (a, c))
    assert [s["caption"] for s in ja["sentences"]] != [s["caption"] for s in jc["sentences"]]
    assert not np.array_equal(_all_frames(a / "videos" / "video0.mp4"), _all_frames(c / "videos" / "video0.mp4"))


def test_videodatainfo_has_official_msrvtt_fields(synth_small):
    data = json.loads((synth_small / "videodatainfo.json").read_text())
    assert {"info", "videos", "sentences"} <= set(data)
    for v in data["videos"]:
        assert isinstance(v["video_id"], str) and v["video_id"] == f"video{v['id']}"
        assert isinstance(v["id"], int) and isinstance(v["category"], int) and isinstance(v["url"], str)
        assert isinstance(v["start time"], float) and isinstance(v["end time"], float)
        assert v["split"] in ("train", "validate", "test")
        assert (synth_small / "videos" / f"{v['video_id']}.mp4").exists()
    ids = {v["video_id"] for v in data["videos"]}
    per_clip = {}
    for s in data["sentences"]:
        assert isinstance(s["sen_id"], int) and isinstance(s["caption"], str) and s["video_id"] in ids
        per_clip[s["video_id"]] = per_clip.get(s["video_id"], 0) + 1
    assert set(per_clip) == ids and all(10 <= n <= 20 for n in per_clip.values())
    assert {v["split"] for v in data["videos"]} == {"train", "validate", "test"}


def test_every_clip_decodes_with_decord_and_ffmpeg(synth_small):
    for path in sorted((synth_small / "videos").glob("*.mp4")):
        vr = decord.VideoReader(str(path))
        assert len(vr) == 48 and vr[0].shape == (120, 160, 3) and vr.get_avg_fps() == pytest.approx(24)
        raw, _ = (ffmpeg.input(str(path)).output("pipe:", format="rawvideo", pix_fmt="rgb24")
                  .run(capture_stdout=True, quiet=True))
        assert len(raw) == 48 * 120 * 160 * 3
        stream = ffmpeg.probe(str(path))["streams"][0]
        assert (stream["width"], stream["height"], stream["r_frame_rate"]) == (160, 120, "24/1")


def _colour_masks(frame: np.ndarray) -> dict[str, np.ndarray]:
    """Pixels of each palette colour: saturated pixels, classified by nearest palette hue."""
    rgb = frame.reshape(-1, 3).astype(float) / 255
    mx, mn = rgb.max(1), rgb.min(1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
    keep = (sat > 0.5) & (mx > 0.35)
    hues = np.array([colorsys.rgb_to_hsv(*p)[0] for p in rgb[keep]]) if keep.any() else np.zeros(0)
    names = list(COLOURS)
    ref = np.array([colorsys.rgb_to_hsv(*(np.array(c) / 255))[0] for c in COLOURS.values()])
    d = np.abs(hues[:, None] - ref[None])
    nearest = np.minimum(d, 1 - d).argmin(1)
    idx = np.flatnonzero(keep)
    out = {}
    for k, name in enumerate(names):
        m = np.zeros(len(rgb), bool)
        m[idx[nearest == k]] = True
        out[name] = m.reshape(frame.shape[:2])
    return out


def test_captions_are_visually_grounded(synth_small):
    """Colour words match the frames' colours; motion words match the object's track in 5 frames."""
    data = json.loads((synth_small / "videodatainfo.json").read_text())
    caps: dict[str, list[str]] = {}
    for s in data["sentences"]:
        caps.setdefault(s["video_id"], []).append(s["caption"])
    for spec in data["vidcap_spec"]:
        vid = f"video{spec['index']}"
        frames = decord.VideoReader(str(synth_small / "videos" / f"{vid}.mp4")).get_batch([4, 14, 24, 33, 43]).asnumpy()
        masks = [_colour_masks(f) for f in frames]
        seen = {c for c in COLOURS if masks[2][c].sum() > 30}
        said = {w for c in caps[vid] for w in c.split() if w in COLOURS}
        assert said and said <= seen, (vid, said, seen)
        main = spec["objects"][0]
        area = np.array([m[main["colour"]].sum() for m in masks], float)
        ys, xs = zip(*[np.nonzero(m[main["colour"]]) for m in masks], strict=True)
        cx, cy = np.array([x.mean() for x in xs]), np.array([y.mean() for y in ys])
        action = main["action"]
        if action == "left":
            assert np.all(np.diff(cx) < -2), (vid, cx)
        elif action == "right":
            assert np.all(np.diff(cx) > 2), (vid, cx)
        elif action == "up":
            assert np.all(np.diff(cy) < -2), (vid, cy)
        elif action in ("down",):
            assert np.all(np.diff(cy) > 2), (vid, cy)
        elif action == "grow":
            assert np.all(np.diff(area) > 0), (vid, area)
        elif action == "shrink":
            assert np.all(np.diff(area) < 0), (vid, area)
        elif action == "bounce":
            assert np.ptp(cy) > 5 and not (np.all(np.diff(cy) > 0) or np.all(np.diff(cy) < 0)), (vid, cy)
        assert action in ACTIONS


def test_specs_cover_every_action_and_colour():
    specs = make_specs(600, 0)
    assert {s.objects[0].action for s in specs} == set(ACTIONS)
    assert {o.colour for s in specs for o in s.objects} == set(COLOURS)


def test_synth_bad_input(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    cases = [["--out", str(tmp_path / "full")], ["--out", str(tmp_path / "o1"), "--size", "161x120"],
             ["--out", str(tmp_path / "o2"), "--size", "big"], ["--out", str(tmp_path / "o3"), "--clips", "0"]]
    for args in cases:
        r = subprocess.run([tool("pipeline"), "synth", *args, "--quiet"], capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr
    assert "--overwrite" in subprocess.run([tool("pipeline"), "synth", *cases[0]], capture_output=True, text=True).stderr


def test_missing_ffmpeg_says_how_to_install(tmp_path):
    r = subprocess.run([tool("pipeline"), "synth", "--out", str(tmp_path / "o"), "--clips", "1"],
                       capture_output=True, text=True, env={"PATH": "/nonexistent"})
    assert r.returncode == 2 and "apt-get install -y ffmpeg" in r.stderr
