"""Decode clips in a child process so a hung or runaway decoder can be killed without killing the job.

The parent (one per shard task, or the `caption` command) talks to ``python -m pipeline.clip_worker``
over pipes with length-prefixed pickles. If a clip takes longer than the timeout, the child is
killed, the clip is reported as failed, and a fresh child serves the rest. A subprocess (not
multiprocessing) is used because Dask worker processes are daemonic and may not fork
multiprocessing children.

Two limits make "killed" and "failed" mean what they say:
- the child leads its own process group, and a timeout kills the whole group, so the ffmpeg
  processes of the fallback decoder die with it instead of decoding on as orphans;
- the child caps its own address space (RLIMIT_AS, ``memory_mb``) before it decodes anything; the
  cap is inherited by its ffmpeg processes, so a clip that would need more memory fails alone
  instead of taking the machine down. The default, 4 GiB of address space, is ~11x what the child
  needs to decode a 720p clip with decord or ffmpeg (VmPeak 0.36 GiB, measured; 0.15 GiB is too
  little to load ffmpeg's libraries).
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict

_HEADER = struct.Struct("<Q")
DEFAULT_MEMORY_MB = 4096


class ClipFailed(Exception):
    """A clip that could not be decoded; `reason` is its category (missing, empty, timeout, ...)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


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
    """Parent side: decode(path) -> dict result, or raises ClipFailed.

    The reply holds ``jpegs`` (JPEG bytes at `quality`) or, with ``quality=None``, ``frames``
    (a (K, size, size, 3) uint8 array), plus the sampling metadata of pipeline.frames.SampledFrames.
    """

    def __init__(self, frames: int, size: int, quality: int | None, timeout: float,
                 memory_mb: int = DEFAULT_MEMORY_MB):
        self.args = (frames, size, quality, memory_mb)
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "vidcap.pipeline.clip_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        _send(self.proc.stdin, self.args)

    def decode(self, path: str) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None
        _send(self.proc.stdin, str(path))
        deadline = time.monotonic() + self.timeout
        fd = self.proc.stdout.fileno()
        try:
            (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
            reply = pickle.loads(_read_exact(fd, n, deadline))
        except TimeoutError:
            self.close()
            raise ClipFailed(f"decoding took longer than {self.timeout:g} s (killed)", "timeout") from None
        except EOFError:
            self.close()
            raise ClipFailed("decoder process crashed", "crashed") from None
        if "error" in reply:
            raise ClipFailed(reply["error"], reply["reason"])
        return reply

    @property
    def pid(self) -> int | None:
        """The child's pid, which is also its process group (None before the first clip)."""
        return self.proc.pid if self.proc is not None else None

    def close(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the child and any ffmpeg it started
            except ProcessLookupError:
                pass
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


class DecoderPool:
    """N ClipDecoders (N child processes), so clips decode in parallel with each other and with the
    caller's model: ``caption`` keeps the decoders busy on the next clips while the CNN runs on a
    batch, ``caption serve`` lends one decoder to each request. Each decoder keeps its timeout and
    memory cap; a decoder is used by one thread at a time (``decode`` waits for a free one)."""

    def __init__(self, n: int, frames: int, size: int, quality: int | None, timeout: float,
                 memory_mb: int = DEFAULT_MEMORY_MB):
        import queue

        self.n = n
        self.all = [ClipDecoder(frames, size, quality, timeout, memory_mb) for _ in range(n)]
        self.free: queue.Queue[ClipDecoder] = queue.Queue()
        for d in self.all:
            self.free.put(d)

    def decode(self, path: str) -> dict:
        """As ClipDecoder.decode, on the first free decoder (blocks while all are busy)."""
        d = self.free.get()
        try:
            return d.decode(path)
        finally:
            self.free.put(d)

    def imap(self, paths: list[str], ahead: int) -> Iterator[tuple[str, dict | ClipFailed]]:
        """(path, reply or ClipFailed) in the order of `paths`, decoding up to `ahead` clips ahead of the
        consumer on the pool's threads (one per decoder)."""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        def one(p: str) -> dict | ClipFailed:
            try:
                return self.decode(p)
            except ClipFailed as e:
                return e

        with ThreadPoolExecutor(self.n, thread_name_prefix="decode") as ex:
            todo, window = iter(paths), deque()
            for p in todo:
                window.append((p, ex.submit(one, p)))
                if len(window) >= max(ahead, self.n):
                    break
            while window:
                p, fut = window.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    window.append((nxt, ex.submit(one, nxt)))
                yield p, fut.result()

    def close(self) -> None:
        for d in self.all:
            d.close()

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cap_memory(memory_mb: int) -> None:
    if memory_mb <= 0:
        return
    import resource

    limit = memory_mb << 20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _serve() -> None:
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    fd = inp.fileno()

    def recv():
        (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, None))
        return pickle.loads(_read_exact(fd, n, None))

    frames, size, quality, memory_mb = recv()
    _cap_memory(memory_mb)
    from vidcap.pipeline.frames import DecodeError, encode_jpeg, sample_frames

    while True:
        try:
            path = recv()
        except EOFError:
            return
        try:
            s = sample_frames(path, frames, size)
            meta = asdict(s)
            meta.pop("frames")
            pixels = {"frames": s.frames} if quality is None else {"jpegs": [encode_jpeg(f, quality) for f in s.frames]}
            reply = {**pixels, **meta}
        except DecodeError as e:
            reply = {"error": str(e), "reason": e.reason}
        except MemoryError:
            reply = {"error": f"out of memory (the decoder is capped at {memory_mb} MB)", "reason": "out_of_memory"}
        except Exception as e:  # anything else a broken file provokes
            reply = {"error": f"{type(e).__name__}: {e}", "reason": "undecodable"}
        _send(out, reply)


if __name__ == "__main__":
    _serve()
