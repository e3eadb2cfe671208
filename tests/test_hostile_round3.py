"""The FAIL rows of the third adversarial review (issue 38, ``../shared/reviews/adversarial-round3.md``)
as one table. Each row builds its hostile input itself in the test's own folder -- a device node made
with ``mknod`` (as root; else the row skips and says why), a FIFO, a symlink, a lying HTTP server on
127.0.0.1 -- runs the real console script and asserts the exit status, the one line and what is on
disk afterwards. Rows are named after the log's IDs (P-50, C-1, H-11, ...)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import attack_table, copy_build, one_line_error, tool

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ATTACKS, attack = attack_table()  # row -> function (request, tmp_path) that attacks and asserts


def run(cmd: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, **kw)


def device_node(tmp: Path) -> Path:
    """A clone of /dev/null (character device 1,3) in the test's own folder; root only."""
    if os.geteuid() != 0:
        pytest.skip("making a device node (mknod) needs root; the FIFO and folder rows cover the same check")
    node = tmp / "node"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return node


def target(tmp: Path, kind: str) -> Path:
    """A path that is not a regular file: a device node, a FIFO, a folder, or a symlink to a device."""
    if kind == "device":
        return device_node(tmp)
    if kind == "link-to-device":
        link = tmp / "link"
        link.symlink_to(device_node(tmp))
        return link
    path = tmp / kind
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    return path


def still(path: Path, kind: str) -> bool:
    mode = os.stat(path).st_mode
    return {"device": stat.S_ISCHR, "link-to-device": stat.S_ISCHR, "fifo": stat.S_ISFIFO,
            "dir": stat.S_ISDIR}[kind](mode) and (kind != "link-to-device" or path.is_symlink())


def scores_input(tmp: Path) -> list[str]:
    (tmp / "p.json").write_text(json.dumps({"c1": "a man is cooking", "c2": "a dog runs"}))
    (tmp / "r.json").write_text(json.dumps({"c1": ["a man is cooking food"], "c2": ["a dog is running"]}))
    return [tool("evalkit"), "score", "--pred", str(tmp / "p.json"), "--refs", str(tmp / "r.json"), "--no-meteor"]


# ---- P-50/P-51: an atomic write renamed a temporary file over a device node ------------------------
for _flag in ("--json", "--per-clip"):
    for _kind in ("device", "link-to-device", "fifo", "dir"):
        @attack(f"P-51 evalkit score {_flag} onto a {_kind}")
        def _(request, tmp, flag=_flag, kind=_kind):
            node = target(tmp, kind)
            r = run([*scores_input(tmp), flag, str(node)])
            what = {"device": "a character device", "link-to-device": "a character device", "fifo": "a FIFO",
                    "dir": "a directory"}[kind]
            assert one_line_error(r, "evalkit score") == f"{node}: {what}, not a regular file; refusing to replace it " \
                                                  "(write to a file)"
            assert still(node, kind)
            assert not [p for p in node.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary left


# ---- C-1 .. C-6: caption --jsonl on files that are not its own rows ---------------------------------
def caption_jsonl(tmp: Path, jsonl: Path, *more: str, model: Path | None = None, **kw) -> subprocess.CompletedProcess:
    clip = tmp / "clip.mp4"
    if not clip.exists():
        clip.write_bytes(b"not reached: the --jsonl file is refused first")
    return run([tool("caption"), str(clip), *more, "--model", str(model or tmp / "no-model"), "--jsonl", str(jsonl)],
               **kw)


FOREIGN = {"C-1a a json.dump output without a newline": (b'{"video1": "a man is cooking", "video2": "a dog"}',
                                                          "line 1 is not one of its rows"),
           "C-1b a one-line document without a newline": (b"single line no newline, an important document",
                                                          "it holds no complete row (no newline)"),
           "C-1c 3 MB of text without a newline": (b"x" * (3 << 20), "line 1 is longer than 1 MB"),
           "C-1d notes with newlines": (b"my notes line 1\nline 2\n", "line 1 is not JSON")}
for _row, (_data, _why) in FOREIGN.items():
    @attack(_row)
    def _(request, tmp, data=_data, why=_why):
        f = tmp / "file.jsonl"
        f.write_bytes(data)
        r = caption_jsonl(tmp, f)
        assert one_line_error(r, "caption") == f"{f}: {why}; not a file this command wrote (nothing changed)"
        assert f.read_bytes() == data  # was cut to nothing and replaced, exit 0


@attack("C-4 --jsonl a FIFO nobody reads")
def _(request, tmp):
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    r = caption_jsonl(tmp, fifo, timeout=60)  # hung forever
    assert one_line_error(r, "caption") == f"{fifo}: a FIFO with no reader; start its reader first"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def tiny(request) -> dict[str, Path]:
    return request.getfixturevalue("tiny_model")


def a_clip(request, n: int = 1) -> Path:
    return request.getfixturevalue("synth_small") / "videos" / f"video{n}.mp4"


@attack("C-2 --jsonl whose last row is whole but has no newline")
def _(request, tmp):
    f = tmp / "caps.jsonl"
    row = {"path": str(a_clip(request, 1)), "caption": "kept", "frame_times": [], "error": None}
    f.write_text(json.dumps(row))  # hand-edited: no trailing newline
    r = run([tool("caption"), str(a_clip(request, 1)), str(a_clip(request, 2)), "--model", str(tiny(request)["model"]),
             "--jsonl", str(f), "--quiet"])
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in f.read_text().splitlines()]
    assert rows[0] == row and [r["path"] for r in rows] == [str(a_clip(request, 1)), str(a_clip(request, 2))]
    assert "1 captioned, 0 failed, 1 already" in r.stdout


@attack("C-2b --jsonl with a row torn by a full disk: cut, and redone")
def _(request, tmp):
    f = tmp / "caps.jsonl"
    row = {"path": str(a_clip(request, 1)), "caption": "kept", "frame_times": [], "error": None}
    f.write_text(json.dumps(row) + "\n" + '{"path": "' + str(a_clip(request, 2)) + '", "capt')
    r = run([tool("caption"), str(a_clip(request, 1)), str(a_clip(request, 2)), "--model", str(tiny(request)["model"]),
             "--jsonl", str(f), "--quiet"])
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in f.read_text().splitlines()]
    assert rows[0] == row and [r["path"] for r in rows] == [str(a_clip(request, 1)), str(a_clip(request, 2))]


@attack("C-3 --jsonl a symlink to /dev/full")
def _(request, tmp):
    if not os.path.exists("/dev/full"):
        pytest.skip("this machine has no /dev/full")
    link = tmp / "full.jsonl"
    link.symlink_to("/dev/full")
    r = run([tool("caption"), str(a_clip(request)), "--model", str(tiny(request)["model"]), "--jsonl", str(link),
             "--quiet"], timeout=120)  # read endless zeros until MemoryError
    assert one_line_error(r, "caption") == f"{link}: No space left on device"
    assert link.is_symlink() and stat.S_ISCHR(os.stat(link).st_mode)


@attack("C-6 --jsonl /dev/stdout into a pipe")
def _(request, tmp):
    r = run([tool("caption"), str(a_clip(request)), "--model", str(tiny(request)["model"]), "--jsonl", "/dev/stdout",
             "--quiet"], timeout=120)  # hung: the resume step read the pipe
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [row["path"] for row in rows] == [str(a_clip(request))] and rows[0]["error"] is None


# ---- P-36 .. P-40: --overwrite of a folder the command did not make ---------------------------------
def precious_folder(tmp: Path, *extra: str) -> Path:
    d = tmp / "D"
    (d / "src").mkdir(parents=True)
    (d / "precious.txt").write_text("precious")
    (d / "src" / "main.c").write_text("int main() {}")
    for name in extra:
        (d / name).mkdir()
    return d


def intact(d: Path) -> bool:
    return (d / "precious.txt").read_text() == "precious" and (d / "src" / "main.c").exists()


@attack("P-36 pipeline build --overwrite of a folder that merely holds shards/")
def _(request, tmp):
    d = precious_folder(tmp, "shards")
    r = run([tool("pipeline"), "build", "--dataset", "msrvtt", "--root", str(tmp / "nowhere"), "--out", str(d),
             "--overwrite"])
    assert one_line_error(r, "pipeline build") == (
        f"--out {d}: not a pipeline output (it holds precious.txt, shards/, src/); refusing to replace it for "
        "--overwrite: remove it yourself or choose another --out")
    assert intact(d) and (d / "shards").is_dir()


@attack("P-36b a real build (with its marker, or an old one without it) is still replaceable")
def _(request, tmp):
    from vidcap.owned import MARKER, made_by
    from vidcap.pipeline.build import BuildConfig

    build = copy_build(request.getfixturevalue("built_small"), tmp / "b")
    assert made_by(build) == "pipeline build"
    BuildConfig(dataset="msrvtt", root=".", out=str(build), overwrite=True).validate()
    (build / MARKER).unlink()  # a build made before the marker: recognised by its layout
    BuildConfig(dataset="msrvtt", root=".", out=str(build), overwrite=True).validate()
    (build / "notes.txt").write_text("mine")  # ... but not with a user's file beside it
    with pytest.raises(Exception, match="not a pipeline output"):
        BuildConfig(dataset="msrvtt", root=".", out=str(build), overwrite=True).validate()


@attack("P-37 pipeline synth --overwrite of a folder it did not make")
def _(request, tmp):
    d = precious_folder(tmp)
    r = run([tool("pipeline"), "synth", "--out", str(d), "--clips", "1", "--overwrite", "--quiet"])
    assert one_line_error(r, "pipeline synth") == (
        f"--out {d}: not a `pipeline synth` output (it holds precious.txt, src/); refusing to replace it for "
        "--overwrite: remove it yourself or choose another --out")
    assert intact(d) and sorted(p.name for p in d.iterdir()) == ["precious.txt", "src"]


@attack("P-38 pipeline synth --out SYMLINK --overwrite: the link's folder is replaced, the link kept")
def _(request, tmp):
    real, link = tmp / "real", tmp / "link"
    argv = [tool("pipeline"), "synth", "--clips", "1", "--size", "64x48", "--seconds", "1", "--workers", "1", "--quiet"]
    assert run([*argv, "--out", str(real)]).returncode == 0
    link.symlink_to(real)
    r = run([*argv, "--out", str(link), "--overwrite"])
    assert r.returncode == 0, r.stderr  # was an rmtree traceback
    assert link.is_symlink() and (real / "videos" / "video0.mp4").is_file() and (real / "videodatainfo.json").is_file()


@attack("P-38b pipeline build --out SYMLINK (to a foreign folder) --overwrite")
def _(request, tmp):
    d = precious_folder(tmp, "shards")
    link = tmp / "link"
    link.symlink_to(d)
    r = run([tool("pipeline"), "build", "--dataset", "msrvtt", "--root", str(tmp / "nowhere"), "--out", str(link),
             "--overwrite"])
    assert one_line_error(r, "pipeline build").startswith(f"--out {d}: not a pipeline output (it holds precious.txt, ")
    assert intact(d) and link.is_symlink()


@attack("P-40 train export --overwrite into a folder that is not a vidcap model")
def _(request, tmp):
    d = precious_folder(tmp)
    (d / "config.json").write_text('{"x": 1}')
    r = run([tool("train"), "export", "--ckpt", str(tiny(request)["ckpt"]), "--out", str(d), "--overwrite"])
    assert one_line_error(r, "train export") == (
        f"--out {d}: not a vidcap model folder (it holds config.json, precious.txt, src/); refusing to replace it "
        "for --overwrite: remove it yourself or choose another --out")
    assert intact(d) and (d / "config.json").read_text() == '{"x": 1}'
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "precious.txt", "src"]


@attack("P-40b train export --overwrite of a vidcap model folder keeps the user's own files")
def _(request, tmp):
    d = tmp / "m"
    shutil.copytree(tiny(request)["model"], d)
    (d / "notes.txt").write_text("mine")
    r = run([tool("train"), "export", "--ckpt", str(tiny(request)["ckpt"]), "--out", str(d), "--overwrite"])
    assert r.returncode == 0, r.stderr
    assert (d / "notes.txt").read_text() == "mine" and json.loads((d / "config.json").read_text())["format"]


# ---- P-52 / H-1: pipeline inspect ---------------------------------------------------------------------
@attack("P-52 pipeline inspect --png NAME without an extension")
def _(request, tmp):
    build = copy_build(request.getfixturevalue("built_small"), tmp / "b")
    r = run([tool("pipeline"), "inspect", str(build), "--png", str(tmp / "sheet")])
    assert r.returncode == 0, r.stderr  # was a PIL ValueError traceback
    assert (tmp / "sheet").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- ..R-15, A-45, A-46: checkpoints checked like model folders -------------------------
def tampered_checkpoint(request, tmp: Path, change: Callable[[dict], None]) -> Path:
    import torch

    raw = torch.load(tiny(request)["ckpt"], weights_only=True)
    change(raw)
    path = tmp / "bad.pt"
    torch.save(raw, path)
    return path


def _nan_weights(raw: dict) -> None:
    first = next(k for k, v in raw["model"].items() if v.is_floating_point())
    raw["model"][first] = raw["model"][first] * float("nan")


CHECKPOINTS = {
    "R-12 n_frames=0": (lambda raw: raw["config"].__setitem__("n_frames", 0), "n_frames 0 is outside 1..64"),
    "R-13 max_len=10^9": (lambda raw: raw["config"].__setitem__("max_len", 10**9),
                          "max_len 1000000000 is outside 2..1024"),
    "R-14 pixel_std=0": (lambda raw: raw["config"].__setitem__("pixel_std", (0.0, 0.0, 0.0)),
                         "pixel_std [0.0, 0.0, 0.0] is outside 0.001..100 (frames are scaled to 0..1 first)"),
    "R-14b NaN weights": (_nan_weights, "its weights hold NaN or infinite values (e.g. "),
    "R-15 image_size=100000": (lambda raw: raw["config"].__setitem__("image_size", 100000),
                               "image_size 100000 is outside 8..2048"),
}
for _row, (_change, _line) in CHECKPOINTS.items():
    for _cmd in ("caption", "train eval"):
        @attack(f"{_row}: {_cmd} --ckpt")
        def _(request, tmp, change=_change, line=_line, cmd=_cmd):
            ckpt = tampered_checkpoint(request, tmp, change)
            argv = ([tool("caption"), str(a_clip(request)), "--ckpt", str(ckpt)] if cmd == "caption" else
                    [tool("train"), "eval", "--ckpt", str(ckpt), "--data", str(request.getfixturevalue("built_small")),
                     "--no-meteor", "--out", str(tmp / "ev")])
            r = run(argv, timeout=120)  # a traceback, a 128 GB allocation, or empty captions with exit 0
            assert one_line_error(r, cmd).startswith(f"{ckpt}: {line}")
            assert sorted(os.listdir(tmp)) == ["bad.pt"]  # no --out folder, nothing beside the checkpoint


def tampered_folder(request, tmp: Path, file: str, change: Callable[[dict], None]) -> Path:
    folder = tmp / "m"
    shutil.copytree(tiny(request)["model"], folder)
    doc = json.loads((folder / file).read_text())
    change(doc)
    (folder / file).write_text(json.dumps(doc))
    return folder


FOLDERS = {
    "A-45 pixel_mean 1e308": ("config.json", lambda d: d["preprocessing"].__setitem__("pixel_mean", [1e308] * 3),
                              "config.json: pixel_mean [1e+308, 1e+308, 1e+308] is outside -10..10"),
    "A-45b pixel_std 1e-320": ("config.json", lambda d: d["preprocessing"].__setitem__("pixel_std", [1e-320] * 3),
                               "config.json: pixel_std [1e-320, 1e-320, 1e-320] is outside 0.001..100"),
    "A-46 a 1,000,000-character word": ("vocab.json", lambda d: d["itos"].__setitem__(5, "x" * 10**6),
                                        "vocab.json: its vocabulary holds a word of 1,000,000 characters"),
    "A-46b an empty word": ("vocab.json", lambda d: d["itos"].__setitem__(5, ""),
                            "vocab.json: its vocabulary holds an empty word"),
}
for _row, (_file, _change, _line) in FOLDERS.items():
    @attack(f"{_row}: caption --model")
    def _(request, tmp, file=_file, change=_change, line=_line):
        folder = tampered_folder(request, tmp, file, change)
        r = run([tool("caption"), str(a_clip(request)), "--model", str(folder)], timeout=120)  # was: "" with rc 0
        assert one_line_error(r, "caption").startswith(f"{folder}/{line}")


def lite0_weights(tmp: Path, kind: str) -> Path:
    path = tmp / f"weights-{kind}"
    if kind == "text":
        path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    elif kind == "random":
        path.write_bytes(os.urandom(100))
    elif kind == "fifo":
        os.mkfifo(path)
    return path


for _kind in ("text", "random", "fifo"):
    @attack(f"R-7/R-8 backbone_weights= a {_kind} file")
    def _(request, tmp, kind=_kind):
        pytest.importorskip("timm")
        weights = lite0_weights(tmp, kind)
        r = run([tool("train"), "--stage", "1", "--data", str(request.getfixturevalue("built_small")), "--run",
                 str(tmp / "run"), "--preset", "tiny", "--quiet", "num_workers=0", "model.backbone=tf_efficientnet_lite0",
                 "model.pretrained=true", f"backbone_weights={weights}"], timeout=180)
        line = one_line_error(r, "train")  # was an IndexError / UnpicklingError traceback; a FIFO "not found"
        assert line.startswith(f"backbone_weights={weights}: " + (
            "not a regular file" if kind == "fifo" else "not a tf_efficientnet_lite0 weights file")), line


# ---- H-1, H-11..H-15: a build read from a lying HTTP server ---------------------------------------------
class Liar:
    """A local HTTP server (127.0.0.1, a free port) serving a build under /MODE/: ``ok`` honestly, the
    others lying about the manifests (gzip bomb, endless body, a 10^12-byte shard, a trickle)."""

    def __init__(self, root: Path):
        import http.server
        import threading

        liar = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                mode, _, rel = self.path.lstrip("/").partition("/")
                path = root / rel
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                try:
                    liar.serve(self, mode, rel, data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{mode}/"

    def serve(self, h, mode: str, rel: str, data: bytes) -> None:
        import gzip
        import time

        manifest = rel.startswith("shards/manifest-")
        if manifest and mode == "huge-shard":
            doc = json.loads(data)
            doc["shards"][0]["bytes"] = 10**12
            data = json.dumps(doc).encode()
        h.send_response(200)
        if manifest and mode == "gzip":  # 40 KB on the wire, 40 MB inflated
            body = gzip.compress(b" " * (40 << 20))
            h.send_header("Content-Encoding", "gzip")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        elif manifest and mode == "endless":  # no length, never ends
            h.send_header("Connection", "close")
            h.end_headers()
            while True:
                h.wfile.write(b" " * 65536)
        elif manifest and mode == "trickle":  # an honest length, one byte every 0.5 s
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            for i in range(len(data)):
                h.wfile.write(data[i: i + 1])
                h.wfile.flush()
                time.sleep(0.5)
        else:
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def liar(built_small):
    server = Liar(built_small)
    yield server
    server.close()


def inspect_url(tmp: Path, url: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("pipeline"), "inspect", url], capture_output=True, text=True, timeout=120,
                          env={**ENV, **env}, cwd=tmp)


@attack("H-1 pipeline inspect URL")
def _(request, tmp):
    url = request.getfixturevalue("liar").url("ok")
    r = inspect_url(tmp, url)  # was "http:/127.0.0.1:.../ok: not a pipeline output (no build.json)"
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{url}: built from msrvtt") and (tmp / "contact_sheet.png").is_file()


REMOTE = {
    "H-11 a manifest claiming a 10^12-byte shard": ("huge-shard", {},
                                                    "shards[0]: bytes 1000000000000 is more than 4096 MB "
                                                    "(VIDCAP_MAX_SHARD_MB)"),
    "H-12 a gzip-encoded manifest inflating 40 KB to 40 MB": ("gzip", {"VIDCAP_MAX_JSON_MB": "1"},
                                                             "larger than 1 MB (VIDCAP_MAX_JSON_MB); not a json "
                                                             "file of a build"),
    "H-13 an endless manifest": ("endless", {"VIDCAP_MAX_JSON_MB": "1"},
                                 "larger than 1 MB (VIDCAP_MAX_JSON_MB); not a json file of a build"),
    "H-15 a manifest trickled one byte every 0.5 s": ("trickle", {"VIDCAP_READ_DEADLINE_S": "3"},
                                                      "not read within 3 s (the deadline for one file, "
                                                      "VIDCAP_READ_DEADLINE_S); "),
}
for _row, (_mode, _env, _line) in REMOTE.items():
    @attack(_row)
    def _(request, tmp, mode=_mode, env=_env, line=_line):
        import time

        url = request.getfixturevalue("liar").url(mode)
        t0 = time.monotonic()
        r = inspect_url(tmp, url, **env)  # was: memory growing until MemoryError, or a hang of hours
        msg = one_line_error(r, "pipeline inspect")
        assert msg.startswith(f"{url}shards/manifest-train.json: {line}"), msg
        assert time.monotonic() - t0 < 60 and not (tmp / "contact_sheet.png").exists()


# ---- S-31, S-32, S-66: caption serve against many trickling connections ----------------------------
def _serve(request, tmp: Path, *flags: str):
    from test_serve import Server

    return Server(tiny(request)["model"], tmp / "tmp", *flags)


def _open(url: str, n: int, body: bool) -> list:
    """`n` connections that sent part of a request: its first header lines (``body=False``) or its
    headers and the start of a 1 MB upload (``body=True``)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)))
        if body:
            s.sendall(b"POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
                      b"Content-Length: 1000000\r\n\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; "
                      b"filename=\"slow.mp4\"\r\n\r\n")
        else:
            s.sendall(b"POST /caption HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    return socks


def _trickle(socks: list, body: bool, seconds: float) -> None:
    """One more byte on every connection each 0.5 s, for `seconds` (a header line's byte, or the upload's)."""
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for s in socks:
            try:
                s.send(b"x" if body else b"X")
            except OSError:  # closed by the server: its deadline
                pass
        time.sleep(0.5)


def _reply(sock, wait: float) -> bytes:
    sock.settimeout(wait)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


@attack("S-32/S-66 caption serve: 100 header and 100 body tricklers, a normal upload still captioned")
def _(request, tmp):
    import threading
    import time

    import httpx

    clip = a_clip(request)
    s = _serve(request, tmp, "--workers", "1", "--queue", "1", "--header-timeout", "3", "--read-timeout", "20")
    try:
        headers, bodies = _open(s.url, 100, body=False), _open(s.url, 100, body=True)
        threads = [threading.Thread(target=_trickle, args=(socks, kind, 12), daemon=True)
                   for socks, kind in ((headers, False), (bodies, True))]
        for t in threads:
            t.start()
        time.sleep(1)
        t0 = time.monotonic()  # was: 503 in plain text for as long as they trickle (S-32), or JSON 503 (S-66)
        r = httpx.post(s.url + "/caption", files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")}, timeout=60)
        assert r.status_code == 200 and r.json()["caption"], r.text
        assert httpx.get(s.url + "/health", timeout=10).json()["status"] == "ok"
        took = time.monotonic() - t0
        late = _reply(headers[0], 10)  # the header tricklers: 408 at their deadline, however they pace
        assert late.startswith(b"HTTP/1.1 408 Request Timeout"), late[:200]
        assert json.loads(late.partition(b"\r\n\r\n")[2]) == {
            "error": "the request's headers did not arrive within 3 s"}
        for t in threads:
            t.join()
        for sock in headers + bodies:
            sock.close()
        assert took < 30, took
    finally:
        assert s.stop(), s.stderr()


@attack("S-32b caption serve: past --max-connections, a 503 in the service's JSON")
def _(request, tmp):
    s = _serve(request, tmp, "--max-connections", "5", "--header-timeout", "20")
    try:
        socks = _open(s.url, 5, body=False)
        extra, = _open(s.url, 1, body=False)
        reply = _reply(extra, 10)  # was uvicorn's plain-text "Service Unavailable"
        assert reply.startswith(b"HTTP/1.1 503 Service Unavailable"), reply[:200]
        assert json.loads(reply.partition(b"\r\n\r\n")[2]) == {
            "error": "busy: 5 connections open; try again shortly"}
        for sock in [*socks, extra]:
            sock.close()
    finally:
        assert s.stop(), s.stderr()


# ---- P-44/P-45: pipeline synth when a worker's ffmpeg fails (a full disk) --------------------------------
for _workers in ("2", "1"):
    @attack(f"P-44/P-45 pipeline synth --workers {_workers} on a full disk")
    def _(request, tmp, workers=_workers):
        from test_bad_build_input import with_file_size_limit

        out = tmp / "syn"
        r = run(with_file_size_limit(2000, [tool("pipeline"), "synth", "--out", str(out), "--clips", "2", "--size",
                                            "64x48", "--seconds", "1", "--workers", workers, "--quiet"]), timeout=120)
        line = one_line_error(r, "pipeline synth")  # --workers 2 hung forever; --workers 1 was a traceback
        assert line.startswith(f"{out}/videos/video") and ".mp4: cannot write it (" in line, line
        assert not list(out.rglob("*.tmp.mp4")) and not (out / "videodatainfo.json").exists()


# ---- R-16, P-46: TensorBoard events outside --out, and on a full disk --------------------------------
@attack("R-16 train eval --out DIR writes nothing beside the checkpoint")
def _(request, tmp):
    ckpt = tmp / "ck" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy(tiny(request)["ckpt"], ckpt)
    os.chmod(ckpt.parent, 0o555)  # as the read-only mount of the log; root ignores it, the listing below does not
    try:
        r = run([tool("train"), "eval", "--ckpt", str(ckpt), "--data", str(request.getfixturevalue("built_small")),
                 "--no-meteor", "--out", str(tmp / "ev")])
    finally:
        os.chmod(ckpt.parent, 0o755)
    assert r.returncode == 0, r.stderr
    assert os.listdir(ckpt.parent) == ["best.pt"]  # was: tb/events.out.tfevents.* beside it
    assert list((tmp / "ev" / "tb").iterdir()) and (tmp / "ev" / "gallery.html").is_file()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MB tmpfs mounted in the test's folder (root only), unmounted afterwards."""
    mnt = tmp_path / "tfs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root and a mount-capable container; a full disk is not simulated")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave: int) -> None:
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    (mnt / "filler").write_bytes(b"\0" * max(0, free - leave))


@attack("P-46 train on an almost full disk: one line, no TensorBoard traceback")
def _(request, tmp):
    mnt = request.getfixturevalue("small_tmpfs")
    fill(mnt, 8 << 10)
    r = run([tool("train"), "--stage", "1", "--data", str(request.getfixturevalue("built_small")), "--run",
             str(mnt / "run"), "--preset", "tiny", "--quiet", "num_workers=0", "epochs=1"], timeout=300)
    line = one_line_error(r, "train")
    assert line.endswith("No space left on device") and "Traceback" not in r.stderr, r.stderr[-2000:]


# ---- the low rows: R-9, P-18, P-34, A-96..A-100, P-42 -------------------------------------------------
@attack("R-9 a key=value override after a flag")
def _(request, tmp):
    r = run([tool("train"), "--stage", "1", "--data", str(tmp / "nodata"), "--run", str(tmp / "run"), "--preset", "tiny",
             "epochs=1", "--quiet", "lr=0.001"])
    # was "unrecognized arguments: lr=0.001": the arguments are read, and the missing build is the error
    assert one_line_error(r, "train").startswith(f"{tmp / 'nodata'}/vocab.json: missing")


@attack("P-18 pipeline synth --seconds 0 / --fps 0 are refused, not the defaults")
def _(request, tmp):
    for flag, line in (("--seconds", "--seconds 0.0: must be between 0.5 and 30"),
                       ("--fps", "--fps 0: must be between 1 and 120")):
        r = run([tool("pipeline"), "synth", "--out", str(tmp / "s"), "--clips", "1", flag, "0"])
        assert one_line_error(r, "pipeline synth") == line
    assert not (tmp / "s").exists()


@attack("P-34 train robustness with a nuisance or strength given twice")
def _(request, tmp):
    for flag, value, line in (("--nuisances", "noise,noise", "--nuisances noise,noise: noise is given twice"),
                              ("--strengths", "mild,mild", "--strengths mild,mild: mild is given twice")):
        r = run([tool("train"), "robustness", "--ckpt", str(tmp / "x.pt"), "--data", str(tmp), flag, value])
        assert one_line_error(r, "train robustness") == line
    assert os.listdir(tmp) == []


@attack("A-96/A-97/A-98 the Python API: frames without pixels, float workers, a bytes path")
def _(request, tmp):
    import numpy as np

    import vidcap

    with pytest.raises(ValueError, match=r"workers=1.5: must be an int"):
        vidcap.load(tiny(request)["model"], workers=1.5)
    with pytest.raises(ValueError, match=r"batch='8': must be an int"):
        vidcap.load(tiny(request)["model"], batch="8")
    with vidcap.load(tiny(request)["model"], workers=1) as cap:
        for shape in ((5, 0, 64, 3), (5, 64, 0, 3), (0, 64, 64, 3)):
            with pytest.raises(ValueError, match=r"expected an \(N, H, W, 3\) uint8 RGB array"):
                cap.caption_frames(np.zeros(shape, np.uint8))
        clip = a_clip(request)
        assert cap.caption(os.fsencode(str(clip))) == cap.caption(str(clip))  # was a TypeError about ints


@attack("A-99/A-100 caption serve: a model name with escapes; Ctrl-C right after the banner")
def _(request, tmp):
    import signal

    folder = tampered_folder(request, tmp, "config.json", lambda d: d.__setitem__("name", "evil\x1b[2J\nsecond line"))
    proc = subprocess.Popen([tool("caption"), "serve", "--model", str(folder), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**ENV, "TMPDIR": str(tmp)})
    banner = proc.stdout.readline()
    proc.send_signal(signal.SIGINT)  # start-up may still be running: that was a 32-line traceback
    _, err = proc.communicate(timeout=60)
    assert banner.startswith("caption serve: evil\\x1b[2J\\nsecond line on http://127.0.0.1:"), banner
    assert "\x1b" not in banner and "Traceback" not in err, err[-2000:]
    assert proc.returncode in (0, 130, -2), (proc.returncode, err[-2000:])


@attack("P-42 caption serve on a full temporary disk: 507 in JSON")
def _(request, tmp):
    import httpx

    mnt = request.getfixturevalue("small_tmpfs")
    s = _serve(request, mnt)  # TMPDIR on the 1 MB tmpfs
    try:
        fill(mnt, 0)
        r = httpx.post(s.url + "/caption", files={"file": ("clip.mp4", a_clip(request).read_bytes(), "video/mp4")},
                       timeout=60)
        assert r.status_code == 507 and r.json() == {
            "error": "the server's disk is full; the upload could not be stored (try again later)"}, r.text
        (mnt / "filler").unlink()
    finally:
        assert s.stop(), s.stderr()


@pytest.mark.parametrize("row", list(ATTACKS))
def test_hostile_round3(row, request, tmp_path):
    ATTACKS[row](request, tmp_path)
