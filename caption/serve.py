"""`caption serve --model DIR`: the captioner as an HTTP service (FastAPI on uvicorn) and a page.

- ``GET /``: a page (plain HTML and JS, nothing fetched from elsewhere) to upload a clip and see its
  caption beside the frames the model saw.
- ``GET /health``: ``{"status": "ok", "model", "architecture", "busy", "capacity"}``.
- ``POST /caption``: a multipart form with the clip in the field ``file`` -> ``{"caption",
  "frame_times" (seconds), "model", "frames" (the sampled frames as small JPEG data URLs),
  "seconds": {"decode", "caption"}}``.

Errors are one JSON line, ``{"error": "..."}``, with a 4xx for what the client can fix: 400 an
empty upload or no ``file`` field, 413 an upload over ``--max-upload-mb``, 415 a file with no
video ffmpeg can decode, 422 a video that cannot be used (no frames, decoding past ``--timeout``).
503 says the service is full: ``--workers`` requests are decoded at once (each in a decoder
subprocess with its timeout and memory cap, pipeline.clip_worker), ``--queue`` more wait, and any
request beyond those is refused instead of piling up behind them. A place is taken only once the
upload has arrived in full, so a slow client holds nothing but its own connection. 408: the
upload did not arrive in full within ``--read-timeout`` seconds, or the request's headers within
``--header-timeout`` (caption/connections.py: uvicorn had no header deadline, and 110 connections
trickling header lines denied the service). Past ``--max-connections`` open connections: 503.
507: the server's disk is full. Every one of them in the service's JSON.

The service is a thin layer over the Python API (caption/api.py): a :class:`Captioner` decodes each
upload (``Captioner.decode``) and captions its frames (``Captioner.caption_frames``), so a clip gets
the caption the ``caption`` command gives it. The app is built from small parts: the shared state
(:class:`_Service`), the lifespan (temporary folder, decoders), the error handlers, the routes, and
the upload's steps (size limit, multipart form, temporary file).

An upload is written to a private temporary folder (created at start, removed at exit; one left
by a server that was killed is removed by the next one to start: caption/scratch.py) and removed
when its request ends, whatever happened. An over-size body is counted as it arrives and never
stored past the limit; the rest of it is read and thrown away (up to a cap) so the client sees the
413 instead of a reset connection. The model runs one request at a time (the Captioner's lock): on a
CPU, torch already spreads one request over every core, and two at once only contend.

Binds 127.0.0.1 unless ``--host`` says otherwise: it has no authentication.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from vidcap.caption.api import Captioner, VideoError, load_from
from vidcap.caption.scratch import scratch_folder
from vidcap.errors import ArgumentParser, UserError, cli_errors, one_line
from vidcap.flags import add_workers, check_range
from vidcap.model.checkpoint import CheckpointError
from vidcap.pipeline.frames import encode_jpeg

PAGE = Path(__file__).with_name("serve_page.html")
DRAIN_CAP = 64 << 20  # bytes of an over-size body read (and dropped) so the client gets its 413
# VideoError.reason -> status: what the client sent is not a usable video
STATUS = {"empty": 400, "no_video_stream": 415, "undecodable": 415, "no_frames": 422, "timeout": 422,
          "out_of_memory": 422, "crashed": 422, "missing": 400}


@dataclass(kw_only=True)
class ServeSettings:
    """What `caption serve`'s flags set, by keyword only: six numbers in a row are easy to swap."""

    max_upload_mb: float = 50.0
    timeout: float = 30.0  # seconds to decode one upload
    workers: int = 2  # uploads decoded at once
    queue: int = 16  # requests waiting beyond those; more get 503
    beam: int = 3
    read_timeout: float = 60.0  # seconds an upload may take to arrive in full; slower ones get 408
    header_timeout: float = 10.0  # seconds a request's headers may take; slower ones get 408 (caption/connections.py)
    max_connections: int = 1000  # connections open at once; more get 503 (each lives <= header + read timeouts)


# (lowest, highest, lowest excluded, unit) of each flag of `caption serve`
LIMITS: dict[str, tuple[float, float, bool, str]] = {
    "max_upload_mb": (0, 4096, True, "MB"), "timeout": (0, 3600, True, "s"), "workers": (1, 64, False, ""),
    "queue": (0, 4096, False, ""), "beam": (1, 100, False, ""), "port": (0, 65535, False, ""),
    "read_timeout": (0, 3600, True, "s"), "header_timeout": (0, 600, True, "s"), "max_connections": (1, 100_000, False, "")}


class _TooLarge(Exception):
    pass


class _Refused(Exception):
    """A request answered with an error before (or instead of) captioning."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """The one error reply: ``{"error": "one line"}`` with its status."""
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


class _Service:
    """What the routes share: the captioner, the limits, how many requests are in, the upload folder."""

    def __init__(self, captioner: Captioner, settings: ServeSettings):
        self.captioner, self.settings = captioner, settings
        self.limit = int(settings.max_upload_mb * (1 << 20))
        self.capacity = settings.workers + settings.queue
        self.busy = 0
        self.tmp = ""  # set by the lifespan
        self.decoding: asyncio.Semaphore | None = None

    def health(self) -> dict:
        return {"status": "ok", "model": self.captioner.name, "architecture": self.captioner.architecture,
                "busy": self.busy, "capacity": self.capacity}

    async def caption(self, request: Request) -> JSONResponse:
        """POST /caption: receive the upload, then admit it (or 503), decode and caption it; the
        upload's file is removed whatever happened. A place among ``--workers`` + ``--queue`` is
        taken only once the upload has arrived in full: 18 uploads trickling a byte every 3 s held
        every place before (round 3, S-66), and now they hold only their own connections, for at
        most ``--read-timeout``."""
        path = None
        try:
            path, name = await _receive_upload(request, self.tmp, self.limit, self.settings)
            if self.busy >= self.capacity:
                return error(503, f"busy: {self.busy} requests in progress or waiting; try again shortly",
                             {"Retry-After": "2"})
            self.busy += 1
            try:
                return JSONResponse(await self._caption_file(path, name))
            finally:
                self.busy -= 1
        except _Refused as e:
            return error(e.status, str(e), e.headers)
        finally:
            if path is not None:
                Path(path).unlink(missing_ok=True)

    async def _caption_file(self, path: str, name: str) -> dict:
        """The reply for one stored upload: at most ``--workers`` decode at once."""
        assert self.decoding is not None
        async with self.decoding:
            t0 = time.perf_counter()
            try:
                clip = await run_in_threadpool(self.captioner.decode, path)
            except VideoError as e:
                why = str(e).replace(path, name)  # the client's name for it, not our temporary file's
                raise _Refused(STATUS.get(e.reason, 422), f"{name}: not a usable video: {why}") from None
            t1 = time.perf_counter()
            text = await run_in_threadpool(self.captioner.caption_frames, clip.frames)
        return {"caption": text, "frame_times": [round(t, 3) for t in clip.times], "model": self.captioner.name,
                "frames": [_data_url(f) for f in clip.frames],
                "seconds": {"decode": round(t1 - t0, 3), "caption": round(time.perf_counter() - t1, 3)}}


def create_app(captioner: Captioner, settings: ServeSettings) -> FastAPI:
    """The FastAPI app serving `captioner` (vidcap.caption.api.load) with `settings`'s limits."""
    service = _Service(captioner, settings)
    app = FastAPI(title="vidcap", lifespan=_lifespan(service), docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)
    _add_routes(app, service)
    return app


def _lifespan(service: _Service):
    """A private temporary folder for uploads (caption/scratch.py) and the decode semaphore while the
    app runs; at exit the folder is removed and the captioner's decoder processes stopped."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        with scratch_folder() as service.tmp:
            service.decoding = asyncio.Semaphore(service.settings.workers)
            try:
                yield
            finally:
                service.captioner.close()

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is one JSON line, a bug included (uvicorn logs its traceback)."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        message = {404: f"no such page: {request.url.path}", 405: f"{request.method} is not allowed here"}
        return error(e.status_code, message.get(e.status_code, str(e.detail)))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return error(422, f"invalid request: {e.errors()[0].get('msg', 'invalid') if e.errors() else 'invalid'}")

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> JSONResponse:
        return error(500, f"internal error ({type(e).__name__}); the server's log has the details")


def _add_routes(app: FastAPI, service: _Service) -> None:
    """GET / (the page), GET /health, POST /caption."""
    page = PAGE.read_text("utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return service.health()

    @app.post("/caption")
    async def caption(request: Request) -> JSONResponse:
        return await service.caption(request)


# ---- one upload -------------------------------------------------------------------------------------
async def _receive_upload(request: Request, tmp: str, limit: int, settings: ServeSettings) -> tuple[str, str]:
    """The upload's field ``file`` as a file in `tmp` (the caller removes it), and its name."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + (64 << 10):
        await _drain(request, DRAIN_CAP, settings.read_timeout)
        raise _Refused(413, f"upload of {int(length) / (1 << 20):.1f} MB; the limit is {settings.max_upload_mb:g} MB")
    form = await _read_form(request, limit, settings)
    try:
        return await _save_upload(form, tmp)
    finally:
        await form.close()


async def _read_form(request: Request, limit: int, settings: ServeSettings):
    """The multipart form, its body counted as it arrives and refused past `limit` bytes or past
    ``--read-timeout`` seconds (a slow client must not keep its slot)."""
    got = 0

    async def counted():
        nonlocal got
        message = await request.receive()
        if message["type"] == "http.request":
            got += len(message.get("body", b""))
            if got > limit:
                raise _TooLarge
        return message

    try:
        async with asyncio.timeout(settings.read_timeout):
            return await Request(request.scope, counted).form(max_files=1, max_fields=8)
    except TimeoutError:
        raise _Refused(408, f"the upload did not arrive within {settings.read_timeout:g} s ({got} bytes came); "
                       "send it faster, or ask for a longer --read-timeout", {"Connection": "close"}) from None
    except _TooLarge:
        await _drain(request, DRAIN_CAP, settings.read_timeout)
        raise _Refused(413, f"upload larger than the limit of {settings.max_upload_mb:g} MB") from None
    except HTTPException as e:  # starlette's multipart parser: a malformed body
        raise _Refused(400, f"malformed multipart upload: {e.detail}") from None
    except ClientDisconnect:  # nobody is left to answer; the status is for the log
        raise _Refused(400, "the client went away during the upload") from None
    except OSError as e:  # starlette spools a large part to a temporary file
        _disk_full(e)
        raise


def _disk_full(e: OSError) -> None:
    """A full disk under the server's temporary folder: 507 saying so, not a 500 (round 3, P-42)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise _Refused(507, "the server's disk is full; the upload could not be stored (try again later)") from None


async def _save_upload(form, tmp: str) -> tuple[str, str]:
    """The form's ``file`` copied to a private temporary file: its path and the client's name for it."""
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise _Refused(400, "no file: send a multipart/form-data body with the clip in the field 'file'")
    suffix = Path(upload.filename or "").suffix
    suffix = suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ".bin"
    fd, path = tempfile.mkstemp(prefix="upload-", suffix=suffix, dir=tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            await run_in_threadpool(shutil.copyfileobj, upload.file, f, 1 << 20)
            size = f.tell()
    except BaseException as e:
        Path(path).unlink(missing_ok=True)
        if isinstance(e, OSError):
            _disk_full(e)
        raise
    name = one_line(upload.filename or "upload")[:120]
    if size == 0:
        Path(path).unlink(missing_ok=True)
        raise _Refused(400, f"{name}: empty upload (0 bytes)")
    return path, name


async def _drain(request: Request, cap: int, timeout: float) -> None:
    """Read and drop what is left of the body (at most `cap` bytes, for at most `timeout` seconds), so
    the reply reaches the client."""
    seen = 0
    try:
        async with asyncio.timeout(timeout):  # a slow client: answer it anyway
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > cap:
                    return
    except (ClientDisconnect, RuntimeError, TimeoutError):  # gone, the stream already read, or too slow
        return


def _data_url(frame: np.ndarray) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(frame, 85)).decode("ascii")


def parser() -> argparse.ArgumentParser:
    s = ServeSettings()
    p = ArgumentParser(prog="caption serve", description="serve a vidcap model over HTTP: a page at /, "
                       "POST /caption (multipart field 'file'), GET /health")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="model folder (from `train export`)")
    which.add_argument("--ckpt", help="checkpoint (e.g. RUN/stage3/best.pt)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-upload-mb", type=float, default=s.max_upload_mb, help=f"default {s.max_upload_mb:g}")
    p.add_argument("--timeout", type=float, default=s.timeout, help=f"seconds to decode one upload (default {s.timeout:g})")
    add_workers(p, s.workers, "decoder processes, one upload each")
    p.add_argument("--queue", type=int, default=s.queue, help=f"requests that may wait beyond those; more get 503 "
                   f"(default {s.queue})")
    p.add_argument("--beam", type=int, default=s.beam, help=f"beam size (1 = greedy; default {s.beam})")
    p.add_argument("--read-timeout", type=float, default=s.read_timeout,
                   help=f"seconds an upload may take to arrive in full; a slower one gets 408 "
                        f"(default {s.read_timeout:g})")
    p.add_argument("--header-timeout", type=float, default=s.header_timeout,
                   help=f"seconds a request's headers may take to arrive; a slower one gets 408 "
                        f"(default {s.header_timeout:g})")
    p.add_argument("--max-connections", type=int, default=s.max_connections,
                   help=f"connections open at once; more get 503 (default {s.max_connections})")
    return p


def settings_from(args: argparse.Namespace) -> ServeSettings:
    """The parsed flags as settings, each field by the name of its flag (``--read-timeout`` -> ``read_timeout``)."""
    return ServeSettings(**{f.name: getattr(args, f.name) for f in fields(ServeSettings)})


def main(argv: list[str]) -> None:
    with cli_errors("caption serve", also=(CheckpointError,)):
        a = parser().parse_args(argv)
        for key, (lo, hi, above, unit) in LIMITS.items():
            check_range(f"--{key.replace('_', '-')}", getattr(a, key), lo, hi, above=above, unit=unit)
        settings = settings_from(a)
        import uvicorn

        from vidcap.caption.connections import guarded_protocol, raise_open_file_limit

        captioner = load_from(a.ckpt, a.model, beam=a.beam, timeout=a.timeout, workers=a.workers)
        sock = _bind(a.host, a.port)
        raise_open_file_limit(a.max_connections + 256)  # the connections, the decoders, the model's files
        config = uvicorn.Config(create_app(captioner, settings), log_level="warning", timeout_keep_alive=5,
                                http=guarded_protocol(a.header_timeout, a.max_connections))
        shown = f"[{a.host}]" if ":" in a.host else a.host
        open_to_all = a.host not in ("127.0.0.1", "localhost", "::1")
        print(f"caption serve: {printable(captioner.name)} on http://{shown}:{sock.getsockname()[1]}/"
              + (" -- reachable from other machines, and it has no authentication" if open_to_all else ""),
              flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C before uvicorn installed its handlers (during start-up): no traceback
        sys.exit(130)


def printable(text: str) -> str:
    """`text` with control characters escaped: a model's name with ANSI escapes or a newline cleared
    the terminal and faked a second line in the banner (round 3, A-99)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or a UserError saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"{host}:{port}: cannot listen there ({e.strerror or e})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
