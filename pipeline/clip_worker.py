"""Decode clips in a child process so a hung decoder can be killed without killing the job.

The parent (one per shard task) talks to ``python -m pipeline.clip_worker`` over pipes with
length-prefixed pickles. If a clip takes longer than the timeout, the child is killed, the clip
is reported as failed, and a fresh child serves the rest. A subprocess (not multiprocessing) is
used because Dask worker processes are daemonic and may not fork multiprocessing children.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import time
from dataclasses import asdict

_HEADER = struct.Struct("<Q")


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("clip worker exited")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class ClipDecoder:
    """Parent side: decode(path) -> dict result or raises TimeoutError / RuntimeError."""

    def __init__(self, frames: int, size: int, quality: int, timeout: float):
        self.args = (frames, size, quality)
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.clip_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        _send(self.proc.stdin, self.args)

    def decode(self, path: str) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None
        _send(self.proc.stdin, path)
        deadline = time.monotonic() + self.timeout
        fd = self.proc.stdout.fileno()
        try:
            (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
            reply = pickle.loads(_read_exact(fd, n, deadline))
        except TimeoutError:
            self.close()
            raise TimeoutError(f"decoding took longer than {self.timeout:g} s (killed)") from None
        except EOFError:
            self.close()
            raise RuntimeError("decoder process crashed") from None
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for s in (self.proc.stdin, self.proc.stdout):
                try:
                    s.close()
                except OSError:
                    pass
            self.proc = None

    def __enter__(self) -> ClipDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve() -> None:
    from pipeline.frames import DecodeError, encode_jpeg, sample_frames

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    fd = inp.fileno()

    def recv():
        (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, None))
        return pickle.loads(_read_exact(fd, n, None))

    frames, size, quality = recv()
    while True:
        try:
            path = recv()
        except EOFError:
            return
        try:
            s = sample_frames(path, frames, size)
            meta = asdict(s)
            meta.pop("frames")
            reply = {"jpegs": [encode_jpeg(f, quality) for f in s.frames], **meta}
        except DecodeError as e:
            reply = {"error": str(e)}
        except Exception as e:  # anything else a broken file provokes
            reply = {"error": f"{type(e).__name__}: {e}"}
        _send(out, reply)


if __name__ == "__main__":
    _serve()
