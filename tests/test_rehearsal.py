"""bench/experiments/rehearsal.py (the MSR-VTT-sized rehearsal, not run in CI: it takes an hour) -- the
parts its report stands on, checked here: the growth exponent, MSR-VTT's nested splits, the caption
assignment, the per-process peak-RSS reset, and the rendered clips' shape."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

from bench.experiments import rehearsal


def test_the_growth_exponent_is_the_log_log_slope():
    r = rehearsal
    xs = [1000, 3000, 10000]
    assert r.exponent(xs, [2.0 * x for x in xs]) == 1.0
    assert r.exponent(xs, [x**2 / 1e6 for x in xs]) == 2.0
    assert r.exponent(xs, [5.0, 5.0, 5.0]) == 0.0
    assert r.exponent([1000], [1.0]) is None  # one point: no slope
    assert r.exponent(xs, [1.0, None, 0.0]) is None  # only one usable point


def test_the_splits_are_msrvtts_and_nested():
    r = rehearsal
    full, small = r.split_of(10000), r.split_of(1000)
    count = lambda rows, s: sum(split == s for _, split in rows)  # noqa: E731
    assert [count(full, s) for s in ("train", "val", "test")] == [6513, 497, 2990]
    assert [count(small, s) for s in ("train", "val", "test")] == [651, 50, 299]
    assert sorted(i for i, _ in full) == list(range(10000))
    assert set(small) <= set(full)  # the same clip in the same split: 1,000 is part of 10,000


def test_each_clip_gets_twenty_captions_of_one_source_clip():
    r = rehearsal
    sets = [[f"clip {j} sentence {k}" for k in range(n)] for j, n in enumerate((45, 7, 30, 20))]
    caps = r.assign(10, sets, seed=3)
    assert caps == r.assign(10, sets, seed=3)  # seeded
    for c in caps:
        assert len(c) == r.CAPTIONS_PER_CLIP
        assert len({s.split(" sentence ")[0] for s in c}) == 1  # one source clip per clip
    short = [c for c in caps if c[0].startswith("clip 1 ")]
    assert short and all(set(sets[1]) <= set(c) for c in short)  # fewer than 20: all of them, topped up


PEAK = """
import json
import numpy as np
from bench.experiments import rehearsal as r
r.reset_peak()
before = r.peak_rss_mb()
block = np.ones(256 * 2**20 // 8)  # 256 MiB touched, fresh pages (a new process: nothing freed to reuse)
grown = r.peak_rss_mb()
del block
r.reset_peak()
now = next(int(x.split()[1]) / 1024 for x in open("/proc/self/status") if x.startswith("VmRSS:"))
print(json.dumps({"before": before, "grown": grown, "after": r.peak_rss_mb(), "rss": now}))
"""


def test_the_peak_rss_resets_per_measurement():
    """The peak counts what a measurement touched, and a reset brings it down to the RSS of now. In a
    fresh process: in pytest's, memory freed by earlier tests (kept by vidcap.allocator) is reused."""
    out = subprocess.run([sys.executable, "-c", PEAK], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout
    m = json.loads(out)
    assert m["grown"] - m["before"] > 200
    assert abs(m["after"] - m["rss"]) < 8


def test_rendered_clips_have_the_msrvtt_shape(tmp_path):
    r = rehearsal
    (v,) = r.render_videos(tmp_path, 1, seed=0, workers=1)
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                            "stream=width,height,codec_name,avg_frame_rate:format=duration", "-of", "json", str(v)],
                           capture_output=True, text=True, check=True)
    info = json.loads(probe.stdout)
    s = info["streams"][0]
    assert (s["width"], s["height"], s["codec_name"], s["avg_frame_rate"]) == (320, 240, "h264", "30/1")
    assert 10 <= float(info["format"]["duration"]) <= 30.1
