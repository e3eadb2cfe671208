"""A build read from URLs -- served by a real `python -m http.server` on
127.0.0.1, through fsspec -- and from `file://` and `pipe:`; a dead server is one line naming the
URL, and training resumes once it is back."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, tool

from vidcap.errors import UserError
from vidcap.shards.layout import Build, DataInfo
from vidcap.shards.reader import ShardError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def http_server(root: Path, port: int):
    """`python -m http.server` serving `root` on 127.0.0.1:port until the block ends (at most 10 min:
    `timeout` passes its SIGTERM on to the server)."""
    proc = subprocess.Popen(["timeout", "600", sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait()


def steps(run: Path) -> list[dict]:
    path = run / "stage1" / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == "step"] if path.exists() else []


# Stage 1, frames streamed one clip per step, nothing read ahead: the server can be stopped mid-epoch.
ARGS = ["--stage", "1", "--preset", "tiny", "--quiet"]
OVERRIDES = ["num_workers=0", "feature_cache=false", "batch_size=1", "shuffle_buffer=1", "epochs=2", "eval_every=2",
             "save_every=1"]


def test_train_over_http_stop_the_server_then_resume(built_small, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    local = subprocess.run([tool("train"), *ARGS, "--data", str(built_small), "--run", str(tmp_path / "local"),
                            *OVERRIDES],
                           capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    run = tmp_path / "remote"
    cmd = [tool("train"), *ARGS, "--data", url, "--run", str(run), *OVERRIDES]
    with http_server(built_small, port) as server:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and not [s for s in steps(run) if s["epoch"] == 1] and proc.poll() is None:
            time.sleep(0.02)
        server.terminate()  # epoch 1 (all 17 clips read over HTTP) is done; epoch 2 has begun
        server.wait()
        out, err = proc.communicate(timeout=300)
    r = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    msg = one_line_error(r, "train")
    assert msg.startswith(f"{url}shards/train-0000") and ".tar: cannot read (" in msg, msg
    pos = torch.load(run / "stage1" / "last.pt", weights_only=True)["extra"]["position"]
    assert pos["epoch"] == 1 and 0 < pos["batch"] < 17, pos
    with http_server(built_small, port):
        r = subprocess.run(cmd[:-len(OVERRIDES)] + ["--resume", *OVERRIDES], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(run / "stage1" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "local" / "stage1" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)  # the same bytes, so the same training
    assert [s["loss"] for s in steps(run)] == [s["loss"] for s in steps(tmp_path / "local")]


def test_a_dead_server_or_a_missing_file_is_one_line_naming_the_url(built_small, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    r = subprocess.run([tool("train"), *ARGS, "--data", url, "--run", str(tmp_path / "r"), *OVERRIDES],
                       capture_output=True, text=True, timeout=300)
    msg = one_line_error(r, "train")
    assert msg.startswith(f"{url}vocab.json: cannot read (") and "Cannot connect to host" in msg, msg
    (tmp_path / "half").mkdir()
    for name in ("vocab.json", "attributes.parquet", "clip_attributes.parquet"):
        (tmp_path / "half" / name).write_bytes((built_small / name).read_bytes())
    with http_server(tmp_path / "half", port):
        with pytest.raises(UserError) as e:
            DataInfo.load(url)
        assert str(e.value) == f"{url}cider_df.parquet: missing; is {url} a complete `pipeline build` output?"
    (tmp_path / "copy").mkdir()
    for p in built_small.rglob("*"):
        if p.is_file() and p.name != "train-000002.tar":
            dst = tmp_path / "copy" / p.relative_to(built_small)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(p.read_bytes())
    with http_server(tmp_path / "copy", port):
        with pytest.raises(ShardError) as e:
            Build(url).split("train")
        assert str(e.value) == f"{url}shards/train-000002.tar: missing (listed in the manifest)"
        test_ids = list(Build(url).references("test"))  # the rest is readable: evalkit scores against it
        (tmp_path / "p.json").write_text(json.dumps({i: "a red circle moves to the left" for i in test_ids}))
        r = subprocess.run([tool("evalkit"), "score", "--pred", str(tmp_path / "p.json"), "--refs", url,
                            "--no-meteor"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "CIDEr" in r.stdout, r.stderr


def test_file_and_pipe_urls_read_the_same_build(built_small):
    local = Build(built_small).split("train")
    for root in (built_small.as_uri(), f"pipe:cat {built_small}/", "pipe:cat " + str(built_small) + "/{}"):
        b = Build(root)
        assert b.split("train").metas == local.metas, root
        assert b.vocab() == Build(built_small).vocab() and b.cider_df() == Build(built_small).cider_df()
    with pytest.raises(UserError, match=r"^pipe:cat /nonexistent/shards/manifest-train.json: cannot read \("):
        Build("pipe:cat /nonexistent/").split("train")
