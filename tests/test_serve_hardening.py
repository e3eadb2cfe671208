"""`caption serve` against a slow uploader and after a SIGKILL -- a real uvicorn
server on 127.0.0.1 (tests/test_serve.py's Server: a subprocess with its own TMPDIR), a real
socket that sends half an upload and stalls, real kills."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import httpx
from test_serve import Server


def _upload(url: str, clip: Path) -> httpx.Response:
    return httpx.post(url + "/caption", files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")}, timeout=120)


def _read_response(sock: socket.socket, wait: float) -> bytes:
    sock.settimeout(wait)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            m = re.search(rb"content-length: (\d+)", head, re.I)
            if sep and m and len(body) >= int(m.group(1)):
                break
    except TimeoutError:
        pass
    return data


def test_a_stalled_upload_gets_408_and_holds_no_slot(tiny_model, synth_small, tmp_path):
    clip = synth_small / "videos" / "video1.mp4"
    s = Server(tiny_model["model"], tmp_path / "tmp", "--workers", "1", "--queue", "0", "--read-timeout", "3")
    try:
        host, port = s.url.removeprefix("http://").split(":")
        head = (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.mp4\"\r\n"
                b"Content-Type: video/mp4\r\n\r\n" + clip.read_bytes()[:1000])
        slow = socket.create_connection((host, int(port)))
        t0 = time.monotonic()
        slow.sendall(b"POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
                     b"Content-Length: 1000000\r\n\r\n" + head)  # ... and then nothing more
        time.sleep(0.5)
        meanwhile = _upload(s.url, clip)  # the one slot is taken only by a whole upload (round 3, S-66)
        assert meanwhile.status_code == 200 and meanwhile.json()["caption"], meanwhile.text
        reply = _read_response(slow, 30)
        waited = time.monotonic() - t0
        slow.close()
        status, _, rest = reply.partition(b"\r\n")
        assert status == b"HTTP/1.1 408 Request Timeout", reply[:300]
        error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
        assert re.fullmatch(r"the upload did not arrive within 3 s \(\d+ bytes came\); send it faster, or ask for a "
                            r"longer --read-timeout", error), error
        assert 3 <= waited < 15  # answered at its deadline, not when the client gives up
        # the next upload is captioned too, nothing is left in the temporary folder
        ok = _upload(s.url, clip)
        assert ok.status_code == 200 and ok.json()["caption"], ok.text
        assert httpx.get(s.url + "/health", timeout=10).json()["busy"] == 0
        folder, = (tmp_path / "tmp").glob("vidcap-serve-*")
        assert os.listdir(folder) == [".owner"]
    finally:
        assert s.stop(), s.stderr()


def test_a_killed_servers_temporary_folder_is_removed_by_the_next_server(tiny_model, tmp_path):
    tmp = tmp_path / "tmp"
    old_style = tmp / "vidcap-serve-from-an-older-vidcap"  # no .owner: nothing says its server is gone
    old_style.mkdir(parents=True)
    a = Server(tiny_model["model"], tmp)
    left, = [p for p in tmp.glob("vidcap-serve-*") if p != old_style]
    assert (left / ".owner").read_text().strip() == str(a.proc.pid)
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    a.log.close()
    assert left.is_dir()  # a SIGKILL removes nothing
    b = Server(tiny_model["model"], tmp)
    try:
        assert not left.exists()
        assert (f"caption serve: removed 1 temporary folder(s) of servers that were killed: {left}"
                in Path(b.log.name).read_text())
        mine, = [p for p in tmp.glob("vidcap-serve-*") if p != old_style]
        c = Server(tiny_model["model"], tmp)  # a live server's folder is never taken for a dead one's
        try:
            assert mine.is_dir() and len(list(tmp.glob("vidcap-serve-*"))) == 3
        finally:
            assert c.stop(), c.stderr()
    finally:
        assert b.stop(), b.stderr()
    assert list(tmp.glob("vidcap-serve-*")) == [old_style]  # each stopped server removed its own
