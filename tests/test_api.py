"""The Python API. `vidcap.load(DIR or CKPT)` captions a file, a list of files, a
folder and decoded frames with the captions the `caption` command gives (a real subprocess of the
command on real encoded clips); it checks its settings, names what failed, and leaves no decoder
process behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, tool

import vidcap
from vidcap.caption.api import Caption, VideoError
from vidcap.model.checkpoint import CheckpointError
from vidcap.pipeline.frames import sample_frames

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def clips(synth_small, tmp_path_factory):
    """Three real clips, a text file named .mp4 and an empty .avi in one folder."""
    d = tmp_path_factory.mktemp("api") / "videos"
    d.mkdir()
    for n in (1, 2, 3):
        shutil.copy(synth_small / "videos" / f"video{n}.mp4", d / f"clip{n}.mp4")
    (d / "notes.mp4").write_text("this is not a video\n")
    (d / "empty.avi").write_bytes(b"")
    return d


@pytest.fixture(scope="module")
def command_rows(tiny_model, clips, tmp_path_factory) -> dict[str, dict]:
    """What the `caption` command writes for the folder: {file name: row}."""
    out = tmp_path_factory.mktemp("api-cli") / "caps.jsonl"
    r = subprocess.run([tool("caption"), str(clips), "--model", str(tiny_model["model"]), "--jsonl", str(out),
                        "--quiet"], capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 1, r.stderr[-2000:]  # two of the five files are not videos
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {os.path.basename(row["path"]): row for row in rows}


@pytest.fixture(scope="module")
def cap(tiny_model):
    with vidcap.load(tiny_model["model"]) as c:
        yield c


def test_a_folder_a_list_and_one_file_give_the_commands_captions(cap, clips, command_rows):
    folder = cap.caption(clips)
    assert [c.row() for c in folder] == [command_rows[n] for n in sorted(command_rows)]
    assert [os.path.basename(c.path) for c in folder] == ["clip1.mp4", "clip2.mp4", "clip3.mp4", "empty.avi",
                                                        "notes.mp4"]
    listed = cap.caption([clips / "clip3.mp4", str(clips / "clip1.mp4")])
    assert all(isinstance(c, Caption) and c.ok for c in listed)
    assert [c.text for c in listed] == [command_rows["clip3.mp4"]["caption"], command_rows["clip1.mp4"]["caption"]]
    assert cap.caption(clips / "clip2.mp4") == command_rows["clip2.mp4"]["caption"]
    bad = {c.path: c for c in folder if not c.ok}
    assert bad[str(clips / "empty.avi")].reason == "empty" and bad[str(clips / "empty.avi")].text is None


def test_a_checkpoint_loads_as_its_model_folder(tiny_model, clips, command_rows):
    with vidcap.load(tiny_model["ckpt"], workers=1, batch=1) as from_ckpt:
        assert from_ckpt.caption(clips / "clip1.mp4") == command_rows["clip1.mp4"]["caption"]
        assert from_ckpt.name == "stage1/best.pt" and from_ckpt.architecture == "s2vt"


def test_decoded_frames_give_the_same_captions(cap, clips, command_rows):
    names = ("clip1.mp4", "clip2.mp4", "clip3.mp4")
    want = [command_rows[n]["caption"] for n in names]
    k, s = cap.n_frames, cap.image_size
    sampled = [sample_frames(clips / n, k, s).frames for n in names]  # the pipeline's own sampler
    assert [cap.caption_frames(f) for f in sampled] == want
    assert cap.caption_frames(sampled) == want and cap.caption_frames(np.stack(sampled)) == want  # batched
    assert [round(t, 3) for t in cap.decode(clips / "clip1.mp4").times] == command_rows["clip1.mp4"]["frame_times"]

    import decord  # a whole clip decoded by the caller: the captioner takes its segment centres

    whole = decord.VideoReader(str(clips / "clip2.mp4"), width=s, height=s, num_threads=1)
    every = whole.get_batch(list(range(len(whole)))).asnumpy()
    assert every.shape == (len(whole), s, s, 3) and len(whole) > k
    assert cap.caption_frames(every) == command_rows["clip2.mp4"]["caption"]
    bigger = decord.VideoReader(str(clips / "clip2.mp4"), num_threads=1)  # its own size: resized here
    text = cap.caption_frames(bigger.get_batch(list(range(len(bigger)))).asnumpy())
    assert isinstance(text, str)


def test_what_cannot_be_used_is_named(cap, tiny_model, clips, tmp_path):
    with pytest.raises(VideoError, match=r"missing\.mp4: file not found") as e:
        cap.caption(tmp_path / "missing.mp4")
    assert e.value.reason == "missing"
    with pytest.raises(VideoError, match=r"empty\.avi: file is empty \(0 bytes\)"):
        cap.caption(clips / "empty.avi")
    with pytest.raises(ValueError, match=r"expected an \(N, H, W, 3\) uint8 RGB array, got float32"):
        cap.caption_frames(np.zeros((5, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"^beam=0: must be 1\.\.100$"):
        vidcap.load(tiny_model["model"], beam=0)
    with pytest.raises(ValueError, match=r"^timeout=0: must be > 0 and <= 86400 \(s\)$"):
        vidcap.load(tiny_model["model"], timeout=0)
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        vidcap.load(tmp_path)  # a folder that is not a model folder


def test_close_stops_the_decoder_processes(tiny_model, clips):
    c = vidcap.load(tiny_model["model"], workers=2)
    c.caption([clips / "clip1.mp4", clips / "clip2.mp4"])
    pids = [d.pid for d in c._decoders().all if d.pid is not None]
    assert pids and all(_alive(p) for p in pids)
    c.close()
    assert not any(_alive(p) for p in pids)
    assert c.caption(clips / "clip1.mp4")  # a later call starts new ones
    c.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_import_vidcap_is_cheap_and_the_example_runs(tiny_model, clips, command_rows):
    r = subprocess.run([sys.executable, "-c", "import sys, vidcap; assert 'torch' not in sys.modules; "
                        "print(vidcap.__version__, vidcap.load.__module__)"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.split() == [vidcap.__version__, "vidcap.caption.api"], r.stderr
    r = subprocess.run([sys.executable, str(REPO / "examples" / "caption_api.py"), str(tiny_model["model"]),
                        str(clips / "clip1.mp4"), str(clips / "notes.mp4")], capture_output=True, text=True,
                       timeout=300, env=ENV, cwd=REPO.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert f"{clips / 'clip1.mp4'}: {command_rows['clip1.mp4']['caption']}" in lines
    assert any(line.startswith(f"{clips / 'notes.mp4'}: error: ") for line in lines)
    assert f"from decord's frames: {command_rows['clip1.mp4']['caption']}" in lines
