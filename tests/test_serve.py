"""`caption serve` as a user meets it -- a real uvicorn server on 127.0.0.1 (a
subprocess on a free port), real HTTP requests with real clips and bad uploads, 20 clients at once,
and the page driven in headless Chromium (skipped, saying why, where Chromium is not installed;
`make test` installs it). The page's screenshot is kept in test-artifacts/serve_page.png."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO, tool
from PIL import Image

from vidcap.caption.api import caption_rows
from vidcap.model.folder import load_model_folder

ARTIFACTS = REPO / "test-artifacts"
LIMIT_MB = 1
CAPACITY = (2, 2)  # --workers, --queue


class Server:
    """`caption serve` in a subprocess with its own TMPDIR; the address it printed."""

    def __init__(self, model: Path, tmp: Path, *flags: str):
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.log = open(tmp.parent / f"{tmp.name}.log", "w+")
        self.proc = subprocess.Popen([tool("caption"), "serve", "--model", str(model), "--port", "0", *flags],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)})
        line = self.proc.stdout.readline()  # printed once the socket listens
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
        assert m, (line, self.stderr())
        self.url = m.group(1)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and self.proc.poll() is None, self.stderr()
            time.sleep(0.1)

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self) -> bool:
        """SIGTERM; whether it shut down cleanly (uvicorn re-raises the signal after its shutdown: -15)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.log.close()
        return self.proc.returncode in (0, -15) and "Traceback" not in Path(self.log.name).read_text()


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    s = Server(tiny_model["model"], tmp_path_factory.mktemp("serve") / "tmp", "--max-upload-mb", str(LIMIT_MB),
               "--workers", str(CAPACITY[0]), "--queue", str(CAPACITY[1]), "--timeout", "60")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def clip(synth_small) -> Path:
    return synth_small / "videos" / "video1.mp4"


@pytest.fixture(scope="module")
def expected(tiny_model, clip) -> dict:
    """What `caption` says about the clip: the service must say the same."""
    model, folder = load_model_folder(tiny_model["model"])
    return next(caption_rows([str(clip)], model, folder.vocab))


def _post(url: str, name: str, data: bytes, **kwargs) -> httpx.Response:
    return httpx.post(url + "/caption", files={"file": (name, data, "application/octet-stream")}, timeout=60, **kwargs)


def _one_line_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json" and r.text.count("\n") == 0
    body = r.json()
    assert list(body) == ["error"] and body["error"]
    return body["error"]


def test_health_names_the_model(server, tiny_model):
    r = httpx.get(server.url + "/health")
    assert r.json() == {"status": "ok", "model": "run-stage1-best", "architecture": "s2vt", "busy": 0,
                        "capacity": sum(CAPACITY)}


def test_a_clip_is_captioned_as_caption_does_with_its_five_frames(server, clip, expected):
    r = _post(server.url, "my clip.mp4", clip.read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["caption"] == expected["caption"] and body["frame_times"] == expected["frame_times"]
    assert body["model"] == "run-stage1-best" and len(body["frames"]) == 5
    for url in body["frames"]:
        assert url.startswith("data:image/jpeg;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (64, 64)


def test_bad_uploads_are_one_line_json_errors(server, tmp_path):
    assert _one_line_error(_post(server.url, "empty.mp4", b""), 400) == "empty.mp4: empty upload (0 bytes)"
    text = _one_line_error(_post(server.url, "notes.mp4", b"this is a text file, not a video\n" * 20), 415)
    assert text.startswith("notes.mp4: not a usable video: ") and "Invalid data found" in text and str(tmp_path) not in text
    big = os.urandom((LIMIT_MB << 20) + 300_000)
    assert re.fullmatch(r"upload of 1\.3 MB; the limit is 1 MB", _one_line_error(_post(server.url, "big.mp4", big), 413))

    def chunks():  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n\r\n"
    r = httpx.post(server.url + "/caption", content=(c for part in ([body], chunks(), [b"\r\n--XyZ--\r\n"]) for c in part),
                   headers={"content-type": "multipart/form-data; boundary=XyZ"}, timeout=60)
    assert _one_line_error(r, 413) == "upload larger than the limit of 1 MB"
    r = httpx.post(server.url + "/caption", data={"clip": "x"}, timeout=60)
    assert _one_line_error(r, 400).startswith("no file: send a multipart/form-data body")
    assert _one_line_error(httpx.get(server.url + "/caption"), 405) == "GET is not allowed here"
    assert _one_line_error(httpx.get(server.url + "/nope"), 404) == "no such page: /nope"


def test_twenty_clients_at_once_are_served_or_told_503_quickly(server, clip, expected):
    data, results, start = clip.read_bytes(), [None] * 20, threading.Barrier(20)
    clients = [httpx.Client(timeout=60) for _ in range(20)]

    def one(i: int) -> None:
        start.wait()
        t0 = time.monotonic()
        r = clients[i].post(server.url + "/caption", files={"file": ("c.mp4", data)})
        results[i] = (r, time.monotonic() - t0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    elapsed = time.monotonic() - t0
    for c in clients:
        c.close()
    assert all(r is not None for r in results) and elapsed < 60
    ok = [r for r, _ in results if r.status_code == 200]
    busy = [r for r, _ in results if r.status_code == 503]
    assert len(ok) + len(busy) == 20 and len(ok) >= sum(CAPACITY) and busy  # at most workers + queue at once
    assert all(r.json()["caption"] == expected["caption"] for r in ok)
    assert all(_one_line_error(r, 503).startswith("busy: ") and r.headers["retry-after"] == "2" for r in busy)
    assert max(s for r, s in results if r.status_code == 503) < 10  # refused at once, not after a wait
    assert httpx.get(server.url + "/health").json()["busy"] == 0


def test_a_decode_past_the_timeout_is_an_error_for_that_request(tiny_model, clip, tmp_path):
    s = Server(tiny_model["model"], tmp_path / "tmp", "--timeout", "0.001")
    try:
        text = _one_line_error(_post(s.url, "slow.mp4", clip.read_bytes()), 422)
        assert text == "slow.mp4: not a usable video: decoding took longer than 0.001 s (killed)"
        assert httpx.get(s.url + "/health").status_code == 200  # the service goes on
    finally:
        assert s.stop()
    assert list((tmp_path / "tmp").glob("vidcap-serve-*")) == []  # its temporary folder is gone


def test_the_page_in_chromium_uploads_a_clip_and_shows_caption_and_frames(server, clip, expected, tmp_path):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("Debian chromium and chromium-driver are not installed (`make test` installs them: "
                    "apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,640",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-default-apps", "--disable-sync", "--no-proxy-server"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        browser.get(server.url + "/")
        WebDriverWait(browser, 30).until(lambda b: "run-stage1-best" in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "file").send_keys(str(clip))
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "caption").text
                                         or b.find_element(By.ID, "error").text)
        assert browser.find_element(By.ID, "error").text == ""
        assert browser.find_element(By.ID, "caption").text == expected["caption"]
        images = browser.find_elements(By.CSS_SELECTOR, "#frames img")
        assert len(images) == 5 and all(browser.execute_script("return arguments[0].naturalWidth", i) == 64
                                        for i in images)
        labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#frames figcaption")]
        assert labels == [f"{t:.2f} s" for t in expected["frame_times"]]
        fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert fetched and all(u.startswith(server.url + "/") or u.startswith("data:") for u in fetched), fetched
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "serve_page.png"))
    finally:
        browser.quit()
    assert Image.open(ARTIFACTS / "serve_page.png").size[0] >= 1000


def test_uploads_leave_no_temporary_files_and_stopping_removes_the_folder(server):
    left = [p for p in server.tmp.rglob("*") if p.is_file() and p.name != ".owner"]  # .owner: caption/scratch.py
    assert left == []  # every upload so far -- good, bad, too big, refused -- is gone
    assert len(list(server.tmp.glob("vidcap-serve-*"))) == 1  # where uploads went, while it runs
    assert server.stop()
    assert list(server.tmp.glob("vidcap-serve-*")) == [] and not any(p.is_file() for p in server.tmp.rglob("*"))


def test_serve_settings_are_built_by_keyword_from_the_flags_of_the_same_names():
    from vidcap.caption.serve import ServeSettings, parser, settings_from

    with pytest.raises(TypeError):
        ServeSettings(50.0, 30.0)  # positional: refused, so two numbers cannot be swapped
    a = parser().parse_args(["--model", "m", "--timeout", "7", "--queue", "3", "--read-timeout", "9"])
    built = settings_from(a)
    assert (built.timeout, built.queue, built.read_timeout) == (7.0, 3, 9.0)
    assert parser().parse_args(["--model", "m"]).beam == ServeSettings().beam  # the flags' defaults are its
