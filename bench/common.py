"""What the bench scripts share: where the repository and ../shared are, where a report goes and how
it is written, the console scripts of this install, a timer, and the small built-in dataset most
speed benchmarks measure on. One place, so a report's format or the dataset's recipe changes once."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vidcap.atomic import write_bytes_atomic, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # the CEO's data beside the repository (real clips, MSVD captions), when present


def report_path(script: str, suffix: str = "_report.json") -> Path:
    """The default --out of a bench script: ``<name>_report.json`` beside the script (pass ``__file__``)."""
    p = Path(script).resolve()
    return p.with_name(p.stem + suffix)


def write_report(out: str | Path, report: dict, markdown: str | None = None, *, echo: bool = False) -> Path:
    """Write a report atomically: ``out`` (JSON, indent 1) and, given, its tables beside it (``.md``).
    A run cut short leaves the previous report whole. ``echo`` also prints the JSON."""
    out = Path(out)
    write_json_atomic(out, report)
    if markdown is not None:
        write_bytes_atomic(out.with_suffix(".md"), markdown.encode())
    if echo:
        print(json.dumps(report, indent=1, ensure_ascii=False))
    return out


def tool(name: str) -> str:
    """A console script of the Python running this (the venv's ``train``, ``caption``, ...), else PATH's."""
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else (shutil.which(name) or name)


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds of ``fn()``'s fastest of ``repeats`` calls: the least disturbed by other work on the cores."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def built_in_dataset(root: Path, clips: int, *, size: int = 112, shard_size: int = 32, **build: Any) -> Path:
    """``pipeline synth`` (seed 0) + ``pipeline build`` (msrvtt layout) into ``root``: the small built-in
    dataset the speed benchmarks time the trainer on. Returns the build's folder, ``root/data``."""
    from vidcap.pipeline.build import BuildConfig
    from vidcap.pipeline.build import build as run_build
    from vidcap.pipeline.synth import synthesize

    synthesize(root / "synth", clips=clips, seed=0, progress=False)
    run_build(BuildConfig(dataset="msrvtt", root=str(root / "synth"), out=str(root / "data"), size=size,
                          shard_size=shard_size, **{"progress": False, **build}))
    return root / "data"
