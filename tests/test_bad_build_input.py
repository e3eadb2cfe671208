"""Bad input to `pipeline build`: hostile annotations, clip ids and paths,
arguments, a full disk and a cluster without workers -- each one line naming the culprit, nothing
written outside OUT, nothing lost silently."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import webdataset as wds
from conftest import SMALL_BUILD, one_line_error, tool

from vidcap.errors import UserError
from vidcap.pipeline.adapters import load_dataset
from vidcap.pipeline.build import BuildConfig, build
from vidcap.pipeline.cli import main as pipeline_main
from vidcap.shards.writer import sample_key


@pytest.mark.parametrize("layout, text, problem", [
    ("msrvtt", '{"videos": [{"video_id": 7, "split": "train"}], "sentences": []}',
     "videos[0].video_id: expected a string, got int"),
    ("msrvtt", '{"videos": [], "sentences": [{"video_id": "v", "caption": ["a", "b"]}]}',
     "sentences[0].caption: expected a string, got list"),
    ("msrvtt", '{"videos": {"video_id": "v"}, "sentences": []}', "videos: expected a list, got dict"),
    ("msrvtt", "[" * 200_000 + "]" * 200_000, "invalid JSON: nested too deeply"),
    ("msrvtt", '{"videos": NaN, "sentences": []}', "invalid JSON: NaN is not JSON"),
    ("json", '{"videos": [{"id": "a", "path": null, "split": "train", "captions": []}]}',
     "videos[0].path: expected a string, got null"),
    ("json", '{"videos": [{"id": {"x": 1}, "path": "a.mp4", "split": "train", "captions": []}]}',
     "videos[0].id: expected a string, got dict"),
    ("json", '{"videos": [{"id": "a", "path": "a.mp4", "split": "train", "captions": ["ok", 3]}]}',
     "videos[0].captions[1]: expected a string, got int"),
    ("json", '{"videos": [{"id": "a", "path": "a.mp4", "split": 1, "captions": []}]}',
     "videos[0].split: unknown split 1 (expected train/val/test)"),
    ("msvd", '[[17, 1, ["a man"]]]', "item 0[0] (file): expected a string, got int"),
])
def test_annotation_schema_is_checked_in_the_driver(tmp_path, layout, text, problem):
    name = {"msrvtt": "videodatainfo.json", "json": "dataset.json", "msvd": "msvd_train.json"}[layout]
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError) as e:
        load_dataset(layout, tmp_path)
    assert str(e.value) == f"{tmp_path / name}: {problem}"


def test_an_annotation_fifo_or_device_is_refused_not_read(tmp_path):
    os.mkfifo(tmp_path / "videodatainfo.json")  # reading it would block forever
    with pytest.raises(UserError) as e:
        load_dataset("msrvtt", tmp_path)
    assert str(e.value) == f"{tmp_path / 'videodatainfo.json'}: annotation file is not a regular file"
    with pytest.raises(UserError, match=r"^/dev/zero: annotation file is not a regular file$"):
        load_dataset("json", Path("/dev/zero"))  # reading it would never end


def test_nested_annotations_are_one_line_from_the_cli(tmp_path):
    (tmp_path / "videodatainfo.json").write_text("[" * 200_000)
    r = subprocess.run([tool("pipeline"), "build", "--dataset", "msrvtt", "--root", str(tmp_path), "--out",
                        str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert one_line_error(r, "pipeline build") == f"{tmp_path / 'videodatainfo.json'}: invalid JSON: nested too deeply"
    assert not (tmp_path / "out").exists()


HOSTILE_IDS = ["clip.1", "clip_1", "/abs/vidcap-evil", "../up/vidcap-evil", "a b%c"]


def test_hostile_ids_paths_and_captions(synth_small, tmp_path, monkeypatch):
    """Item 2: clip.1 and clip_1 stay two clips; item 9: absolute/../ ids give flat member names,
    punctuation-only captions are dropped and counted, a video named -report is a file, not an
    ffprobe option; item 6: a split whose every clip failed ends the build with an error."""
    d = tmp_path / "ds"
    d.mkdir()
    (d / "-report").write_text("not a video\n" * 50)
    videos = sorted((synth_small / "videos").glob("*.mp4"))
    caps = ["a red circle moves to the left", "...", " !! ", "", "a circle"]
    rows = [{"id": cid, "path": str(videos[i]), "split": "train", "captions": caps} for i, cid in enumerate(HOSTILE_IDS)]
    rows += [{"id": "dash", "path": "-report", "split": "train", "captions": caps},
             {"id": "gone", "path": "gone.mp4", "split": "test", "captions": caps},
             {"id": "dash2", "path": "-report", "split": "test", "captions": caps}]
    (d / "dataset.json").write_text(json.dumps({"videos": rows}))
    monkeypatch.chdir(d)  # relative root, and a cwd where `ffprobe -report` would drop its log
    data = load_dataset("json", Path("dataset.json"))
    assert data.empty_captions_dropped == 3 * len(rows)
    assert all(c.captions == [caps[0], caps[4]] for c in data.clips)
    with pytest.raises(UserError) as e:
        build(BuildConfig(dataset="json", root="dataset.json", out="out", workers=1, **SMALL_BUILD))
    assert re.fullmatch(rf"every clip of split test failed \(2 clips; 1 missing, e\.g\. {d}/gone\.mp4: file not found\); "
                        rf"see {d}/out/failures\.jsonl", str(e.value)), str(e.value)
    assert not list(d.glob("ffprobe-*.log")) and not list(d.glob("ffmpeg-*.log"))
    failures = {f["clip_id"]: f for f in map(json.loads, (d / "out" / "failures.jsonl").read_text().splitlines())}
    assert set(failures) == {"dash", "gone", "dash2"}
    assert failures["dash"]["reason"] == "undecodable" and failures["gone"]["reason"] == "missing"
    assert f"{d}/-report: Invalid data found when processing input" in failures["dash"]["error"]
    assert not (d / "out" / "build.json").exists() and not list((d / "out" / "shards").glob("manifest-*"))
    # the train shards: one sample per id, keys reversible and distinct, member names flat
    shards = sorted((d / "out" / "shards").glob("train-*.tar"))
    metas = {s["__key__"]: json.loads(s["json"])["clip_id"] for p in shards for s in wds.WebDataset(str(p), shardshuffle=False)}
    assert metas == {sample_key(c): c for c in HOSTILE_IDS}
    assert sample_key("clip.1") == "clip%2E1" and sample_key("../up/vidcap-evil") == "%2E%2E%2Fup%2Fvidcap-evil"
    keys = {s["__key__"] for p in shards for s in wds.WebDataset(str(p), shardshuffle=False)}
    assert keys == set(metas)
    for p in shards:
        with tarfile.open(p) as tar:
            assert all("/" not in m.name and m.isreg() for m in tar)
            tar.extractall(tmp_path / "x")  # what the old absolute names made Python write outside
    assert {f.parent for f in (tmp_path / "x").rglob("*")} == {tmp_path / "x"}
    assert not Path("/abs/vidcap-evil.json").exists() and not (tmp_path / "up").exists()
    stats = json.loads((d / "out" / "shards" / "test-000000_stats.json").read_text())
    assert stats == {**stats, "count": 2, "successes": 0, "failed": 2,
                     "failures_by_reason": {"missing": 1, "undecodable": 1}}


@pytest.mark.parametrize("args, line", [
    (["--out", "{file}"], "pipeline build: error: --out {file}: exists and is not a directory"),
    (["--out", "{tmp}/o", "--scheduler", "not-a-url"],
     "pipeline build: error: --scheduler not-a-url: expected a Dask scheduler address like tcp://HOST:PORT"),
    (["--out", "{tmp}/o", "--size", "abc"], "pipeline build: error: argument --size: invalid int value: 'abc' (see --help)"),
    (["--out", "{tmp}/o", "--frames", "0"], "pipeline build: error: --frames 0: must be 1..64"),
    (["--out", "{tmp}", "--overwrite"],
     "pipeline build: error: --out {tmp}: not a pipeline output (it holds file); refusing to replace it for "
     "--overwrite: remove it yourself or choose another --out"),
    (["--out", "{tmp}/o", "--worker-timeout", "0"], "pipeline build: error: --worker-timeout 0.0: must be > 0 and <= 86400 (s)"),
])
def test_build_arguments_are_one_line_errors(tmp_path, capsys, args, line, synth_small):
    (tmp_path / "file").write_text("I am a file")
    fill = {"file": str(tmp_path / "file"), "tmp": str(tmp_path)}
    with pytest.raises(SystemExit) as e:
        pipeline_main(["build", "--dataset", "msrvtt", "--root", str(synth_small), "--quiet",
                       *(a.format(**fill) for a in args)])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [line.format(**fill)]
    assert (tmp_path / "file").read_text() == "I am a file" and not (tmp_path / "o").exists()


def with_file_size_limit(limit: int, cmd: list[str]) -> list[str]:
    """`cmd` run with RLIMIT_FSIZE = limit bytes and SIGXFSZ ignored, so an oversized write fails
    with EFBIG as on a full disk; skips where the platform has no such limit."""
    import resource
    import signal

    if not (hasattr(resource, "RLIMIT_FSIZE") and hasattr(signal, "SIGXFSZ")):
        pytest.skip("no RLIMIT_FSIZE / SIGXFSZ on this platform: cannot simulate a full disk")
    code = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", code, *cmd]


def test_disk_full_build_names_the_path_and_leaves_no_temp_files(synth_small, tmp_path):
    out = tmp_path / "out"
    cmd = [tool("pipeline"), "build", "--dataset", "msrvtt", "--root", str(synth_small), "--out", str(out), "--size",
           "64", "--shard-size", "4", "--min-count", "1", "--workers", "1", "--quiet"]
    r = subprocess.run(with_file_size_limit(20_000, cmd), capture_output=True, text=True, timeout=300)
    msg = one_line_error(r, "pipeline build")
    assert re.fullmatch(rf"{out}/shards/(train|val|test)-\d{{6}}\.tar: File too large", msg), msg
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert all(p.stat().st_size <= 20_000 for p in out.rglob("*"))
    assert not (out / "build.json").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_cluster_without_workers_stops_with_a_clear_error(synth_small, tmp_path):
    port = _free_port()
    sched = subprocess.Popen([tool("dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        r = subprocess.run([tool("pipeline"), "build", "--dataset", "msrvtt", "--root", str(synth_small), "--out",
                            str(tmp_path / "o"), "--shard-size", "4", "--scheduler", f"tcp://127.0.0.1:{port}",
                            "--worker-timeout", "2", "--quiet"], capture_output=True, text=True, timeout=240)
        assert one_line_error(r, "pipeline build") == (
            f"job 1 (shards): the Dask cluster at tcp://127.0.0.1:{port} has had no worker for 2 s; 8 of 8 tasks "
            "unfinished (start workers, or raise --worker-timeout)")
        assert time.time() - t0 < 120
    finally:
        sched.terminate()
        sched.wait(timeout=30)


def test_stray_outputs_of_an_older_plan_are_removed(built_small, synth_small, tmp_path):
    """Item 3: a re-build with another --shard-size leaves no shard of the old plan behind."""
    out = shutil.copytree(built_small, tmp_path / "out")
    (out / "shards" / ".train-000000.tar.abc.tmp").write_bytes(b"debris")
    summary = build(BuildConfig(dataset="msrvtt", root=str(synth_small), out=str(out), workers=1,
                                **{**SMALL_BUILD, "shard_size": 8}))
    names = sorted(p.name for p in (out / "shards").iterdir())
    assert names == sorted([".state", "manifest-train.json", "manifest-val.json", "manifest-test.json",
                            *(f"{n}{ext}" for n in ("train-000000", "train-000001", "train-000002", "val-000000",
                                                     "test-000000") for ext in (".tar", "_stats.json"))])
    # val-000000 holds the same 2 clips under both plans: still valid, kept
    assert (summary["shards_written"], summary["shards_skipped"]) == (4, 1) and os.path.exists(out / "build.json")
