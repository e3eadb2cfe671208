"""bench/'s layout holds: every speed benchmark in bench/speed/ is run by `make bench`, every kept
experiment driver and the results reporter are run by a test, and no bench script edits sys.path
(they run as modules, `python -m bench.speed.job1`, and import the installed vidcap)."""

from __future__ import annotations

import re

from conftest import REPO

BENCH = REPO / "bench"


def _modules(folder: str) -> set[str]:
    return {p.stem for p in (BENCH / folder).glob("*.py") if p.stem != "__init__"}


def test_make_bench_runs_every_speed_benchmark():
    listed = re.search(r"^BENCH_SPEED := (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert listed, "the Makefile's BENCH_SPEED list is gone"
    assert set(listed.group(1).split()) == _modules("speed")


def test_each_kept_driver_and_the_reporter_is_run_by_a_test():
    tests = "\n".join(p.read_text() for p in (REPO / "tests").glob("test_*.py"))
    for folder in ("experiments", "results", "acceptance"):
        for name in _modules(folder):
            assert re.search(rf"bench[./]{folder}[./]{name}\b|from bench\.{folder} import {name}\b", tests), \
                f"bench/{folder}/{name}.py is run by no test: test it or remove it (its findings go to docs/)"


def test_no_bench_script_edits_sys_path():
    offenders = [str(p.relative_to(REPO)) for p in BENCH.rglob("*.py") if "sys.path.insert" in p.read_text()]
    assert offenders == []
