"""`pipeline build` -- adapters, shards, attributes, CIDEr-D df, vocabulary, Dask, robustness."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import ffmpeg
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import SMALL_BUILD, shared_path, tool

from vidcap.errors import UserError
from vidcap.pipeline.adapters import load_dataset
from vidcap.pipeline.build import BuildConfig, build
from vidcap.pipeline.frames import segment_centres
from vidcap.shards.layout import Build


def shard_digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").glob("*.tar"))}


def test_segment_centre_rule():
    assert segment_centres(250, 5) == [25, 75, 125, 175, 225]
    assert segment_centres(48, 5) == [4, 14, 24, 33, 43]
    assert segment_centres(3, 5) == [0, 0, 1, 2, 2]


def test_msrvtt_build_end_to_end(built_small, synth_small):
    summary = json.loads((built_small / "build.json").read_text())
    info = json.loads((synth_small / "videodatainfo.json").read_text())
    want = {"train": 0, "val": 0, "test": 0}
    for v in info["videos"]:
        want[{"validate": "val"}.get(v["split"], v["split"])] += 1
    for split, n in want.items():
        m = json.loads((built_small / "shards" / f"manifest-{split}.json").read_text())
        assert m["samples"] == n == summary["splits"][split]["clips_out"]
        for s in m["shards"]:
            assert hashlib.sha256((built_small / "shards" / s["name"]).read_bytes()).hexdigest() == s["sha256"]
    assert summary["decoders"]["decord"] == len(info["videos"])
    vocab = json.loads((built_small / "vocab.json").read_text())
    assert vocab["itos"][:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert {"moves", "red", "circle", "left"} <= set(vocab["itos"])
    attrs = pq.read_table(built_small / "attributes.parquet").to_pylist()
    assert 10 < len(attrs) <= 400 and {a["pos"] for a in attrs} <= {"NOUN", "VERB", "ADJ"}
    assert [a["clip_count"] for a in attrs] == sorted((a["clip_count"] for a in attrs), reverse=True)
    labels = pq.read_table(built_small / "clip_attributes.parquet").to_pylist()
    assert len(labels) == len(info["videos"]) and all(r["attribute_ids"] for r in labels)
    df, n_docs = Build(built_small).cider_df()
    assert n_docs == want["train"] and df[("<eos>",)] == n_docs


def test_shards_read_with_plain_webdataset(built_small):
    urls = [str(p) for p in sorted((built_small / "shards").glob("train-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == json.loads((built_small / "shards" / "manifest-train.json").read_text())["samples"]
    s = samples[0]
    assert {f"{i}.jpg" for i in range(5)} <= set(s) and s["0.jpg"].size == (64, 64)
    meta = s["json"]
    assert meta["clip_id"] == s["__key__"] and meta["captions"] and meta["decoder"] == "decord"
    assert meta["frame_indices"] == [4, 14, 24, 33, 43] and len(meta["timestamps"]) == 5


def test_one_and_two_dask_workers_give_the_same_bytes(built_small, synth_small, tmp_path):
    build(BuildConfig(dataset="msrvtt", root=str(synth_small), out=str(tmp_path / "one"), workers=1, **SMALL_BUILD))
    assert shard_digests(tmp_path / "one") == shard_digests(built_small)
    for name in ("attributes.parquet", "clip_attributes.parquet", "cider_df.parquet", "vocab.json"):
        assert (tmp_path / "one" / name).read_bytes() == (built_small / name).read_bytes(), name


def test_sigkill_then_rerun_gives_identical_shards(built_small, synth_small, tmp_path):
    out = tmp_path / "killed"
    cmd = [tool("pipeline"), "build", "--dataset", "msrvtt", "--root", str(synth_small), "--out", str(out),
           "--size", "64", "--shard-size", "4", "--min-count", "1", "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "shards" / ".state").glob("*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "shards" / ".state").glob("*.json")))
    assert 2 <= done_before < 7, "the build should have been killed part-way"
    assert not (out / "build.json").exists()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "build.json").read_text())["shards_skipped"] >= 2
    assert shard_digests(out) == shard_digests(built_small)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_build_on_an_existing_dask_cluster(built_small, synth_small, tmp_path, monkeypatch):
    """Relative --root/--out, as in the README, with workers started in another folder (issue 10, item 6)."""
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    dask = tool("dask")
    (tmp_path / "driver").mkdir()
    (tmp_path / "workers").mkdir()
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([dask, "worker", addr, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path / "workers"))
        from distributed import Client

        with Client(addr, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        monkeypatch.chdir(tmp_path / "driver")
        cfg = {**SMALL_BUILD, "workers": None}
        build(BuildConfig(dataset="msrvtt", root=os.path.relpath(synth_small), out="tcp", scheduler=addr, **cfg))
        assert shard_digests(tmp_path / "driver" / "tcp") == shard_digests(built_small)
        assert not [p for p in (tmp_path / "workers").rglob("*") if "dask-scratch-space" not in p.parts]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_unreachable_scheduler_is_a_clear_error(synth_small, tmp_path):
    r = subprocess.run([tool("pipeline"), "build", "--dataset", "msrvtt", "--root", str(synth_small), "--out",
                        str(tmp_path / "x"), "--scheduler", f"tcp://127.0.0.1:{_free_port()}", "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot reach Dask scheduler" in r.stderr


@pytest.fixture(scope="module")
def messy_dataset(tmp_path_factory, synth_small):
    """Real shared clips plus every kind of broken input, in the generic JSON format."""
    videos = {n: shared_path("data", "videos", f"{n}.mp4") for n in ("carphone_pristine", "bikes", "bigbuckbunny", "gradio_b")}
    d = tmp_path_factory.mktemp("messy")
    good = synth_small / "videos" / "video0.mp4"
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n" * 100)
    data = videos["bikes"].read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    fast = d / "faststart.mp4"  # moov first, then cut: the container claims frames it cannot deliver
    ffmpeg.input(str(videos["bikes"])).output(str(fast), c="copy", movflags="+faststart", an=None).run(quiet=True)
    blob = fast.read_bytes()
    (d / "lying.mp4").write_bytes(blob[: int(len(blob) * 0.6)])
    ffmpeg.input(str(good)).output(str(d / "three.mp4"), vframes=3, c="copy").run(quiet=True)
    os.mkfifo(d / "hang.mp4")  # opening it blocks forever: a decoder hang
    rows = [("carphone", videos["carphone_pristine"]), ("bikes", videos["bikes"]), ("bunny", videos["bigbuckbunny"]),
            ("gradio", videos["gradio_b"]), ("good", good), ("missing", d / "nope.mp4"), ("empty", d / "empty.mp4"),
            ("text", d / "text.mp4"), ("truncated", d / "truncated.mp4"), ("lying", d / "lying.mp4"),
            ("three", d / "three.mp4"), ("hang", d / "hang.mp4")]
    ds = {"videos": [{"id": cid, "path": str(p), "split": "train" if i % 3 else "test",
                      "captions": ["a man rides a bike", "", "a rabbit sits on the grass"]} for i, (cid, p) in enumerate(rows)]}
    (d / "dataset.json").write_text(json.dumps(ds))
    out = d / "out"
    summary = build(BuildConfig(dataset="json", root=str(d), out=str(out), timeout=8, workers=2, **{**SMALL_BUILD, "size": 96}))
    return out, summary


def test_bad_clips_are_logged_not_fatal(messy_dataset):
    out, summary = messy_dataset
    failures = {json.loads(line)["clip_id"]: json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()}
    assert {"missing", "empty", "text", "truncated", "hang"} <= set(failures)
    assert "longer than 8 s" in failures["hang"]["error"] and "0 bytes" in failures["empty"]["error"]
    assert failures["missing"]["error"] == "file not found"
    assert all(f["path"] and f["error"] for f in failures.values())
    metas = {}
    for p in sorted((out / "shards").glob("*.tar")):
        for s in wds.WebDataset(str(p), shardshuffle=False).decode("pil"):
            metas[s["__key__"]] = s
    assert {"carphone", "bikes", "bunny", "gradio", "good", "three"} <= set(metas)
    assert "lying" in metas and set(metas) | set(failures) == {"carphone", "bikes", "bunny", "gradio", "good", "missing", "empty", "text",
                                          "truncated", "lying", "three", "hang"}
    assert summary["empty_captions_dropped"] == 12
    reasons = {"missing": 1, "empty": 1, "timeout": 1, "undecodable": 2}
    assert summary["failures_by_reason"] == reasons
    assert {k: failures[k]["reason"] for k in ("missing", "empty", "hang")} == {"missing": "missing", "empty": "empty",
                                                                               "hang": "timeout"}
    stats = [json.loads(p.read_text()) for p in sorted((out / "shards").glob("*_stats.json"))]
    assert sum(s["count"] for s in stats) == 12 and sum(s["successes"] for s in stats) == 7
    assert all(s["count"] == s["successes"] + s["failed"] == s["successes"] + sum(s["failures_by_reason"].values())
               for s in stats)
    r = subprocess.run([tool("pipeline"), "inspect", str(out), "--png", str(out / "sheet.png")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "  per-shard stats: 3 shards, 12 clips, 7 ok, 5 failed (empty 1, missing 1, timeout 1, undecodable 2)" in r.stdout


def test_real_clips_shard_correctly(messy_dataset):
    out, _ = messy_dataset
    metas = {}
    for p in sorted((out / "shards").glob("*.tar")):
        for s in wds.WebDataset(str(p), shardshuffle=False).decode("pil"):
            metas[s["__key__"]] = s
    expect = {"bikes": (250, 25.0), "carphone": (120, 29.97), "bunny": (132, 25.0), "gradio": (150, 30.0)}
    for key, (n, fps) in expect.items():
        m = metas[key]["json"]
        assert m["n_frames"] == n and m["fps"] == pytest.approx(fps, abs=0.01)
        assert m["frame_indices"] == segment_centres(n, 5)
        assert all(metas[key][f"{i}.jpg"].size == (96, 96) for i in range(5))
        assert m["timestamps"][0] == pytest.approx(m["frame_indices"][0] / fps, abs=0.05)
    three = metas["three"]["json"]
    assert three["repeated_frames"] and three["frame_indices"] == [0, 0, 1, 2, 2]
    lying = metas["lying"]["json"]  # the container claims 250 frames; decord fails, ffmpeg decodes what is there
    assert lying["decoder"] == "ffmpeg" and 100 < lying["n_frames"] < 250
    assert lying["frame_indices"] == segment_centres(lying["n_frames"], 5)
    assert lying["decoder_notes"][0].startswith("decord: Error: av_read_frame failed")


def test_malformed_annotations_give_one_line_errors(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "videodatainfo.json").write_text('{"videos": [\n  {"video_id": "video0",, }]}')
    with pytest.raises(UserError, match=r"videodatainfo.json: invalid JSON at line 2 column"):
        load_dataset("msrvtt", tmp_path / "bad")
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "dataset.json").write_bytes('{"videos": [{"id": "caf\u00e9"}]}'.encode("latin-1"))
    with pytest.raises(UserError, match=r"dataset.json: not UTF-8 text \(byte 23"):
        load_dataset("json", tmp_path / "latin")
    r = subprocess.run([tool("pipeline"), "build", "--dataset", "msrvtt", "--root", str(tmp_path / "bad"), "--out",
                        str(tmp_path / "o"), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "line 2" in r.stderr


def test_msvd_json_adapter_and_attributes_on_real_captions(tmp_path):
    src = shared_path("data", "captions", "msvd")
    for name in ("msvd_train.json", "msvd_val.json", "msvd_test.json", "youtube_mapping.txt"):
        (tmp_path / name).symlink_to(src / name)
    data = load_dataset("msvd", tmp_path)
    counts = {s: sum(c.split == s for c in data.clips) for s in ("train", "val", "test")}
    assert counts == {"train": 1200, "val": 100, "test": 670}
    assert data.clips[0].clip_id == "-4wsuPCjDBc_5_15"
    from vidcap.pipeline.attributes import rank_attributes, resolve_model, tag_clips

    train = [c for c in data.clips if c.split == "train"]
    _, clip_count, pos_count = tag_clips([c.captions for c in train], [True] * len(train), resolve_model(None))
    words = {a["word"]: a for a in rank_attributes(clip_count, pos_count, 400)}
    assert len(words) == 400
    assert {"man", "woman", "playing", "dog"} <= set(words)
    assert words["man"]["pos"] == "NOUN" and words["playing"]["pos"] == "VERB"
    assert not {"is", "the", "a", "are"} & set(words)


def test_msvd_csv_adapter(tmp_path):
    rows = ["VideoID,Start,End,WorkerID,Source,AnnotationTime,Language,Description"]
    for i in range(5):
        rows += [f"vid{i},1,5,1,clean,10,English,a man is cooking {i}", f"vid{i},1,5,2,clean,10,German,ein Mann"]
    (tmp_path / "AllVideoDescriptionDataEnglish.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset("msvd", tmp_path)
    assert [c.clip_id for c in data.clips] == [f"vid{i}_1_5" for i in range(5)]
    assert all(c.captions == [f"a man is cooking {i}"] for i, c in enumerate(data.clips))
    assert str(data.clips[0].path).endswith("YouTubeClips/vid0_1_5.avi")


def test_inspect_writes_a_contact_sheet(built_small, tmp_path):
    r = subprocess.run([tool("pipeline"), "inspect", str(built_small), "--png", str(tmp_path / "sheet.png")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "attributes:" in r.stdout and "samples in" in r.stdout
    assert "  per-shard stats: 8 shards, 24 clips, 24 ok, 0 failed\n" in r.stdout
    from PIL import Image

    assert Image.open(tmp_path / "sheet.png").size[0] == 5 * 112


def test_rerun_skips_complete_shards(built_small, synth_small):
    summary = build(BuildConfig(dataset="msrvtt", root=str(synth_small), out=str(built_small), workers=1, **SMALL_BUILD))
    assert summary["shards_written"] == 0 and summary["shards_skipped"] > 0
