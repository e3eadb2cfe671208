"""The ffmpeg fallback keeps only the K sampled frames, the decoder
subprocess is capped in memory and killed with its ffmpeg children on timeout, and `caption`
gives up on a stalled input (a FIFO) after its per-file timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import ffmpeg
import numpy as np
import pytest
import torch
from conftest import tool

from vidcap.model import S2VTCaptioner, make_config, save_checkpoint
from vidcap.pipeline.clip_worker import ClipDecoder, ClipFailed
from vidcap.pipeline.frames import _ffmpeg_sample, segment_centres


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory) -> dict[str, Path]:
    """A 60 s clip (1,500 tiny frames) and a 10-minute one whose index claims frames that are not
    there (moov first, file cut at 60%): decord fails on it, ffmpeg decodes for seconds."""
    d = tmp_path_factory.mktemp("long")
    ten = d / "ten.mp4"
    ffmpeg.input("testsrc=size=64x64:rate=25", f="lavfi", t=10).output(
        str(ten), vcodec="libx264", preset="ultrafast", g=25).run(quiet=True)
    ffmpeg.input(str(ten), stream_loop=5).output(str(d / "minute.mp4"), c="copy").run(quiet=True)
    ffmpeg.input(str(ten), stream_loop=59).output(str(d / "long.mp4"), c="copy", movflags="+faststart").run(quiet=True)
    blob = (d / "long.mp4").read_bytes()
    (d / "lying.mp4").write_bytes(blob[: int(len(blob) * 0.6)])
    return {"minute": d / "minute.mp4", "lying": d / "lying.mp4"}


def test_ffmpeg_fallback_holds_only_the_sampled_frames(long_clips):
    """All 1,500 frames at 256 px are 295 MB; the two-pass fallback's peak stays near its baseline."""
    code = f"""
import json, resource
from pathlib import Path
from vidcap.pipeline.frames import _ffmpeg_sample
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s = _ffmpeg_sample(Path({str(long_clips["minute"])!r}), 5, 256)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({{"grown_kb": grown, "n": s.n_frames, "idx": s.indices, "shape": list(s.frames.shape)}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["n"] == 1500 and got["idx"] == segment_centres(1500, 5) and got["shape"] == [5, 256, 256, 3]
    assert got["grown_kb"] < 40_000, got  # KB; holding every frame would add ~300,000


def test_ffmpeg_fallback_picks_the_frames_a_whole_stream_decode_gives(long_clips, tmp_path):
    clip = tmp_path / "short.mp4"
    ffmpeg.input(str(long_clips["minute"])).output(str(clip), vframes=37, c="copy").run(quiet=True)
    raw, _ = (ffmpeg.input(str(clip)).output("pipe:", format="rawvideo", pix_fmt="rgb24", s="48x48", map="0:v:0",
                                             fps_mode="passthrough", sws_flags="bicubic").run(capture_stdout=True, quiet=True))
    every = np.frombuffer(raw, np.uint8).reshape(-1, 48, 48, 3)
    s = _ffmpeg_sample(clip, 5, 48)
    assert s.n_frames == len(every) == 37 and s.indices == segment_centres(37, 5)
    assert np.array_equal(s.frames, every[s.indices])


def _group(pgid: int) -> list[tuple[int, str, str]]:
    """(pid, command, state) of the live processes in a process group."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            if int(rest[2]) == pgid and rest[0] != "Z":
                out.append((int(p.name), comm, rest[0]))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to watch the decoder's processes")
def test_a_timeout_kills_the_decoder_and_its_ffmpeg(long_clips):
    seen: dict[str, str] = {}
    with ClipDecoder(5, 256, 90, timeout=2.0, memory_mb=1024) as dec:
        dec.decode(str(long_clips["minute"]))  # starts the child; decord decodes this one
        pgid = dec.pid
        assert "Max address space         1073741824" in Path(f"/proc/{pgid}/limits").read_text()
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                for pid, comm, _ in _group(pgid):
                    if comm == "ffmpeg" and "ffmpeg" not in seen:
                        try:
                            seen["ffmpeg"] = Path(f"/proc/{pid}/limits").read_text()
                        except OSError:
                            pass
                time.sleep(0.02)

        t = threading.Thread(target=watch)
        t.start()
        try:
            with pytest.raises(ClipFailed, match=r"^decoding took longer than 2 s \(killed\)$") as e:
                dec.decode(str(long_clips["lying"]))
        finally:
            stop.set()
            t.join()
        assert e.value.reason == "timeout"
    assert "Max address space         1073741824" in seen["ffmpeg"], "ffmpeg should run, under the cap"
    deadline = time.time() + 10
    while _group(pgid) and time.time() < deadline:
        time.sleep(0.05)
    assert _group(pgid) == []


def tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    save_checkpoint(path, S2VTCaptioner(make_config("tiny", 12)), ["<pad>", "<bos>", "<eos>", "<unk>", *"abcdefgh"], ["x"] * 16)
    return path


def test_caption_gives_up_on_a_fifo_and_captions_the_rest(synth_small, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)  # opening it blocks until a writer comes: it never does
    video = synth_small / "videos" / "video2.mp4"
    t0 = time.time()
    r = subprocess.run([tool("caption"), str(fifo), str(video), "--ckpt", str(ckpt), "--beam", "1", "--timeout", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [f"caption: error: {fifo}: decoding took longer than 2 s (killed)"]
    assert len(r.stdout.splitlines()) == 1 and r.stdout.startswith(f"{video}: ")
    assert time.time() - t0 < 120
