"""`caption PATH... --model DIR --jsonl caps.jsonl` captions files and folders, one
JSON row per file; a bad file is a row with its error; a killed run loses no finished row and a
re-run skips what is done; decoders run in parallel with the batched model and change nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import one_line_error, tool

from vidcap.caption.api import caption_rows, expand_inputs
from vidcap.model.folder import load_model_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture()
def videos(synth_small, tmp_path):
    """A folder as a user has one: three clips, a clip in a subfolder, a text file named .mp4, an
    empty .avi, a note and a hidden file (neither a video)."""
    d = tmp_path / "videos"
    (d / "sub").mkdir(parents=True)
    for n in (1, 2, 3):
        shutil.copy(synth_small / "videos" / f"video{n}.mp4", d / f"clip{n}.mp4")
    shutil.copy(synth_small / "videos" / "video4.mp4", d / "sub" / "deeper.mp4")
    (d / "notes.mp4").write_text("this is not a video\n")
    (d / "empty.avi").write_bytes(b"")
    (d / "README.txt").write_text("read me")
    shutil.copy(synth_small / "videos" / "video5.mp4", d / ".hidden.mp4")
    return d


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _caption(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([tool("caption"), *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def test_a_folder_becomes_one_row_per_file_and_a_rerun_adds_only_new_paths(tiny_model, videos, tmp_path):
    out = tmp_path / "caps.jsonl"
    r = _caption(str(videos), "--model", str(tiny_model["model"]), "--jsonl", str(out))
    assert r.returncode == 1, r.stderr[-2000:]  # two files could not be captioned
    assert r.stdout.strip().endswith(f"3 captioned, 2 failed, 0 already in {out}; rows in {out}")
    rows = {os.path.basename(row["path"]): row for row in _rows(out)}
    assert sorted(rows) == ["clip1.mp4", "clip2.mp4", "clip3.mp4", "empty.avi", "notes.mp4"]
    for name in ("clip1.mp4", "clip2.mp4", "clip3.mp4"):
        row = rows[name]
        assert list(row) == ["path", "caption", "frame_times", "error"] and row["error"] is None
        assert isinstance(row["caption"], str) and row["caption"]
        times = row["frame_times"]  # 5 segment centres of a 2 s clip
        assert len(times) == 5 and times == sorted(times) and 0 < times[0] < 0.4 and 1.6 < times[-1] < 2.0
    assert rows["empty.avi"]["error"] == "file is empty (0 bytes)" and rows["empty.avi"]["caption"] is None
    assert "Invalid data found" in rows["notes.mp4"]["error"] and rows["notes.mp4"]["frame_times"] == []
    before = out.read_bytes()

    # --out FILE, the flag's old spelling, still means the same file (vidcap/flags.py)
    r = _caption(str(videos), "--model", str(tiny_model["model"]), "--out", str(out), "--recursive")
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_bytes().startswith(before)  # appended, nothing rewritten
    new = _rows(out)[len(rows):]
    assert [row["path"] for row in new] == [str(videos / "sub" / "deeper.mp4")] and new[0]["error"] is None


def test_stdout_without_out_and_the_same_captions_as_the_file(tiny_model, videos, tmp_path):
    out = tmp_path / "caps.jsonl"
    _caption(str(videos / "clip1.mp4"), str(videos / "notes.mp4"), "--model", str(tiny_model["model"]), "--jsonl", str(out))
    r = _caption(str(videos / "clip1.mp4"), str(videos / "notes.mp4"), "--model", str(tiny_model["model"]))
    good, bad = _rows(out)
    assert r.returncode == 1 and r.stdout == f"{videos / 'clip1.mp4'}: {good['caption']}\n"
    assert r.stderr.splitlines() == [f"caption: error: {videos / 'notes.mp4'}: {bad['error']}"]


def test_a_killed_run_keeps_whole_rows_and_the_rerun_finishes_each_path_once(tiny_model, synth_small, tmp_path):
    out = tmp_path / "caps.jsonl"
    clips = sorted(str(p) for p in (synth_small / "videos").glob("*.mp4"))
    argv = [tool("caption"), *clips, "--model", str(tiny_model["model"]), "--jsonl", str(out), "--batch", "1",
            "--workers", "1", "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the command, its decoder and everything it started
    proc.wait()
    first = _rows(out)  # every line whole: each row is one write
    assert 3 <= len(first) < len(clips)
    with open(out, "ab") as f:  # and a row torn by a crash in the middle of a write is cut off
        f.write(b'{"path": "' + clips[-1].encode() + b'", "capt')
    r = _caption(*clips, "--model", str(tiny_model["model"]), "--jsonl", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _rows(out)
    assert rows[: len(first)] == first
    assert sorted(row["path"] for row in rows) == clips and all(row["error"] is None for row in rows)


def test_parallel_decoders_and_batches_give_the_one_by_one_captions(tiny_model, synth_small):
    model, folder = load_model_folder(tiny_model["model"])
    clips = sorted(str(p) for p in (synth_small / "videos").glob("*.mp4"))[:7] + [str(synth_small / "missing.mp4")]
    one = list(caption_rows(clips, model, folder.vocab, beam=3, workers=1, batch=1))
    many = list(caption_rows(clips, model, folder.vocab, beam=3, workers=2, batch=3))
    assert many == one and [r["path"] for r in many] == clips  # same rows, input order
    assert many[-1]["error"] == "file not found" and all(r["caption"] for r in many[:-1])


def test_inputs_expand_folders_by_suffix_and_nothing_found_is_a_user_error(videos, tiny_model, tmp_path):
    assert expand_inputs([str(videos)]) == [str(videos / n) for n in ("clip1.mp4", "clip2.mp4", "clip3.mp4",
                                                                      "empty.avi", "notes.mp4")]
    assert expand_inputs([str(videos / "README.txt"), str(videos / "README.txt")]) == [str(videos / "README.txt")]
    (tmp_path / "none").mkdir()
    r = _caption(str(tmp_path / "none"), "--model", str(tiny_model["model"]))
    assert one_line_error(r, "caption").startswith(f"{tmp_path / 'none'}: no video files (try --recursive; ")
    (tmp_path / "other.jsonl").write_text("not json\n")
    r = _caption(str(videos), "--model", str(tiny_model["model"]), "--jsonl", str(tmp_path / "other.jsonl"))
    assert one_line_error(r, "caption") == (f"{tmp_path / 'other.jsonl'}: line 1 is not JSON; "
                                              "not a file this command wrote (nothing changed)")
