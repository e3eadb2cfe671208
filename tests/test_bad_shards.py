"""Every reader checks every shard against its manifest and every
member; a bad shard is one line naming the shard, the sample key and the problem (or, with
skip_bad_shards=true, a warning and the count); nothing is ever extracted."""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_BUILD, copy_build, one_line_error, tool
from PIL import Image

from vidcap.shards.layout import Build
from vidcap.shards.reader import ShardError

SHARD = "test-000000.tar"


def read_split(out: Path, split: str):
    """What every reader does first: one pass over the split, each shard checked (vidcap.shards.layout)."""
    return Build(out).split(split)


def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar]


def tar_bytes(items: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in items:
            info = copy.copy(info)
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def entry(info: tarfile.TarInfo | str, **kw) -> tarfile.TarInfo:
    i = copy.copy(info) if isinstance(info, tarfile.TarInfo) else tarfile.TarInfo(info)
    for k, v in kw.items():
        setattr(i, k, v)
    return i


def put_shard(out: Path, name: str, data: bytes, samples: int | None = None, sign: bool = True) -> Path:
    """Replace a shard's bytes; with `sign`, make the manifest agree (a crafted, consistent shard)."""
    path = out / "shards" / name
    path.write_bytes(data)
    if sign:
        mpath = out / "shards" / f"manifest-{name.split('-')[0]}.json"
        m = json.loads(mpath.read_text())
        e = next(s for s in m["shards"] if s["name"] == name)
        e.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), samples=e["samples"] if samples is None else samples)
        mpath.write_text(json.dumps(m))
    return path


def bomb(jpeg: bytes) -> bytes:
    """The JPEG with its frame header claiming 60000 x 60000 pixels."""
    b = bytearray(jpeg)
    i = b.find(b"\xff\xc0")
    b[i + 5 : i + 9] = (60000).to_bytes(2, "big") * 2
    return bytes(b)


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def craft(kind: str, items: list) -> tuple[list, str]:
    """(members of a malformed shard, the problem the reader must name) for one kind of attack."""
    key = items[0][0].name.split(".")[0]
    by_name = {m.name: (m, d) for m, d in items}
    jpg = by_name[f"{key}.0.jpg"][1]
    out = list(items)
    if kind == "dotdot":
        return [(entry("../evil.json"), b"{}"), *out], "sample evil: unsafe member name '../evil.json' (absolute, '..' or in a folder)"
    if kind == "absolute":
        return ([(entry("/tmp/vidcap-hostile.0.jpg"), jpg), *out],
                "sample vidcap-hostile: unsafe member name '/tmp/vidcap-hostile.0.jpg' (absolute, '..' or in a folder)")
    if kind == "symlink":
        out[0] = (entry(f"{key}.0.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd", size=0), b"")
        return out, f"sample {key}: member '{key}.0.jpg' is a symlink; only regular files belong in a shard"
    if kind == "bomb":
        out[0] = (out[0][0], bomb(jpg))
        return out, f"sample {key}: frame 0: claims 3600000000 pixels (a decompression bomb?), expected 64x64"
    if kind == "png":
        out[0] = (out[0][0], png())
        return out, f"sample {key}: frame 0: PNG image, expected JPEG"
    if kind == "bad_json":
        out[5] = (out[5][0], b'{"clip_id": ')
        return out, f"sample {key}: json: not valid JSON (Expecting value: line 1 column 13 (char 12))"
    if kind == "missing_frame":
        return [x for x in out if x[0].name != f"{key}.2.jpg"], f"sample {key}: frame 2 missing"
    if kind == "key_mismatch":
        meta = json.loads(out[5][1])
        out[5] = (out[5][0], json.dumps({**meta, "clip_id": "someone_else"}).encode())
        return out, f"sample {key}: json: clip_id 'someone_else' does not match the key"
    if kind == "duplicate":
        return [*out, out[5]], f"sample {key}: appears twice (members not contiguous)"
    if kind == "no_captions":  # the trainer would divide by the number of references
        meta = json.loads(out[5][1])
        out[5] = (out[5][0], json.dumps({**meta, "captions": []}).encode())
        return out, f"sample {key}: json: captions is not a non-empty list of non-empty strings"
    if kind == "duplicate_member":  # a second frame 0 that would silently replace the first
        return [out[0], (out[0][0], bomb(jpg)), *out[1:]], f"sample {key}: member '{key}.0.jpg' appears twice"
    raise ValueError(kind)


KINDS = ["dotdot", "absolute", "symlink", "bomb", "png", "bad_json", "missing_frame", "key_mismatch", "duplicate",
         "duplicate_member", "no_captions"]


@pytest.fixture
def bad_out(built_small, tmp_path) -> Path:
    return copy_build(built_small, tmp_path / "out")


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_shard_is_one_error_naming_shard_key_and_problem(bad_out, kind, tmp_path):
    shard = bad_out / "shards" / SHARD
    items, problem = craft(kind, members(shard))
    put_shard(bad_out, SHARD, tar_bytes(items))
    with pytest.raises(ShardError) as e:
        read_split(bad_out, "test")
    assert str(e.value) == f"{shard}: {problem}"
    assert not Path("/tmp/vidcap-hostile.0.jpg").exists() and not (bad_out / "evil.json").exists()
    assert not (tmp_path / "evil.json").exists()


def test_truncated_gzipped_and_missing_shards(bad_out):
    shard = bad_out / "shards" / SHARD
    data = shard.read_bytes()
    items = members(shard)
    second = items[6][0]
    cut = tar_bytes(items)[: second.offset_data + 100]  # in the middle of the second sample's first frame
    put_shard(bad_out, SHARD, cut)
    with pytest.raises(ShardError, match=rf"^{shard}: sample {second.name.split('.')[0]}: truncated or not a tar file "
                                         r"\(unexpected end of data\)$"):
        read_split(bad_out, "test")
    put_shard(bad_out, SHARD, gzip.compress(data, mtime=0))  # transparent decompression would allow gzip bombs
    with pytest.raises(ShardError, match=rf"^{shard}: truncated or not a tar file \("):
        read_split(bad_out, "test")
    shard.unlink()
    with pytest.raises(ShardError, match=rf"^{shard}: missing \(listed in the manifest\)$"):
        read_split(bad_out, "test")
    os.mkfifo(shard)  # opening it to read would block forever
    with pytest.raises(ShardError, match=rf"^{shard}: not a regular file$"):
        read_split(bad_out, "test")


def cut_at_sample_boundary(shard: Path, keep: int) -> bytes:
    """The shard's bytes up to the first header of sample `keep` (a valid tar, fewer samples)."""
    items = members(shard)
    first_dropped = items[6 * keep][0]
    return shard.read_bytes()[: first_dropped.offset]


def test_a_shard_cut_at_a_sample_boundary_is_caught_by_the_manifest(bad_out):
    """Item 1: the tar is valid, only the manifest's sample count and sha256 tell."""
    shard = bad_out / "shards" / "train-000001.tar"
    manifest = json.loads((bad_out / "shards" / "manifest-train.json").read_text())
    want = next(s for s in manifest["shards"] if s["name"] == shard.name)
    data = cut_at_sample_boundary(shard, 3)
    put_shard(bad_out, shard.name, data, sign=False)
    msg = (f"{shard}: 3 samples and {len(data)} bytes, but the manifest says 4 samples and {want['bytes']} bytes with "
           "another sha256 (truncated or rewritten since the build); run `pipeline build` again")
    with pytest.raises(ShardError) as e:
        read_split(bad_out, "train")
    assert str(e.value) == msg
    # one line, exit 2, from every command that reads shards
    r = subprocess.run([tool("pipeline"), "inspect", str(bad_out)], capture_output=True, text=True, timeout=300)
    assert one_line_error(r, "pipeline inspect") == msg
    (bad_out / "p.json").write_text(json.dumps({"x": "a caption"}))
    r = subprocess.run([tool("evalkit"), "score", "--pred", str(bad_out / "p.json"), "--refs", str(bad_out), "--split",
                        "train", "--no-meteor"], capture_output=True, text=True, timeout=300)
    assert one_line_error(r, "evalkit score") == msg
    r = subprocess.run([tool("train"), "--stage", "1", "--data", str(bad_out), "--run", str(bad_out / "run"), "--preset",
                        "tiny", "--quiet", "num_workers=0"], capture_output=True, text=True, timeout=600)
    assert one_line_error(r, "train") == msg
    assert not (bad_out / "run" / "stage1" / "metrics.jsonl").exists()


def test_skip_bad_shards_trains_on_the_rest_with_a_warning(bad_out, capsys):
    from vidcap.train.config import make_train_config
    from vidcap.train.loop import run_stage

    shard = bad_out / "shards" / "train-000001.tar"
    put_shard(bad_out, shard.name, cut_at_sample_boundary(shard, 3), sign=False)
    cfg = make_train_config(1, "tiny", ["num_workers=0", "epochs=1", "skip_bad_shards=true"], data=str(bad_out),
                            run=str(bad_out / "run"))
    run_stage(cfg, progress=False)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"warning: skipping a bad shard: {shard}: 3 samples and ")
    assert err[1] == "warning: 1 of 5 train shards skipped: 4 of 17 samples left out"
    records = [json.loads(x) for x in (bad_out / "run" / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert next(r for r in records if r["event"] == "features" and r["split"] == "train")["clips"] == 13


def test_a_killed_rebuild_with_other_settings_leaves_nothing_to_trust(synth_small, bad_out):
    """Item 3: re-building with --size 48 invalidates the 64-px build before any shard is rewritten."""
    shards = bad_out / "shards"
    old = {p.name: p.stat().st_mtime_ns for p in shards.glob(".state/*.json")}
    cmd = [tool("pipeline"), "build", "--dataset", "msrvtt", "--root", str(synth_small), "--out", str(bad_out), "--size",
           "48", "--shard-size", str(SMALL_BUILD["shard_size"]), "--min-count", "1", "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and not any(p.stat().st_mtime_ns != old.get(p.name) for p in shards.glob(".state/*.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rewritten = [p.name for p in shards.glob(".state/*.json") if p.stat().st_mtime_ns != old.get(p.name)]
    assert 1 <= len(rewritten) < len(old), "the re-build should have been killed part-way"
    assert not list(shards.glob("manifest-*.json")) and not (bad_out / "build.json").exists()
    assert not (bad_out / "vocab.json").exists()
    r = subprocess.run([tool("pipeline"), "inspect", str(bad_out)], capture_output=True, text=True, timeout=300)
    assert one_line_error(r, "pipeline inspect") == (f"{bad_out}: the build is incomplete (no build.json: killed, failed "
                                                     "or still running); run `pipeline build` again")
    with pytest.raises(ShardError, match=r"manifest-train.json: no manifest for split 'train' \(build incomplete"):
        read_split(bad_out, "train")


def test_a_shard_error_raised_in_a_dataloader_worker_stays_one_line():
    """torch re-raises a worker's exception as type(e)(traceback text); the user sees the one line."""
    from torch._utils import ExceptionWrapper

    try:
        raise ShardError("data/shards/train-000001.tar: sample video7: frame 2 missing")
    except ShardError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ShardError) as e:
        wrapped.reraise()
    assert str(e.value) == "data/shards/train-000001.tar: sample video7: frame 2 missing"


def test_a_broken_jpeg_body_is_one_line_from_a_dataloader_worker(bad_out):
    """A crafted shard whose JPEG headers are right but whose data is not: it passes the header
    check, fails where frames are decoded (a DataLoader worker), and still names shard and key."""
    from vidcap.shards.layout import DataInfo
    from vidcap.train.data import SplitStream, torch_loader

    shard = bad_out / "shards" / "train-000000.tar"
    items = members(shard)
    key = items[0][0].name.split(".")[0]
    jpg = items[2][1]
    sos = jpg.find(b"\xff\xda")
    items[2] = (items[2][0], jpg[: sos + 2 + int.from_bytes(jpg[sos + 2 : sos + 4], "big") + 8])  # headers, no scan
    put_shard(bad_out, shard.name, tar_bytes(items))
    info = DataInfo.load(bad_out)
    with pytest.raises(ShardError) as e:
        for _ in torch_loader(SplitStream(info, "train"), 64, 4, 1):
            pass
    assert re.fullmatch(rf"{shard}: sample {key}: a frame does not decode \(.+\)", str(e.value)), str(e.value)


def test_a_manifest_with_absurd_values_is_refused(bad_out):
    mpath = bad_out / "shards" / "manifest-test.json"
    m = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**m, "frames": 10**9}))
    with pytest.raises(ShardError, match=rf"^{mpath}: not a shard manifest \(frames 1..64, size 16..1024, shards\); "):
        read_split(bad_out, "test")
    mpath.write_text(json.dumps({**m, "shards": [{**m["shards"][0], "name": "../../etc/passwd"}]}))
    with pytest.raises(ShardError, match=r"shards\[0\]: expected name test-NNNNNN.tar, samples, bytes, sha256"):
        read_split(bad_out, "test")
