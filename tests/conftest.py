"""Shared fixtures: a small built-in dataset and its pipeline build, made once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BIN = REPO / ".venv" / "bin"


def shared_path(*parts: str) -> Path:
    """A file from ../shared, or skip: a user's clone has no ../shared (CI and developers do)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent: this test needs the CEO's ../shared data beside the repo")
    return p


def tool(name: str) -> str:
    """A console script of this install (the venv's, else PATH's)."""
    p = BIN / name
    return str(p) if p.exists() else (shutil.which(name) or name)


SMALL_BUILD = dict(frames=5, size=64, quality=90, shard_size=4, attributes=400, min_count=1, progress=False)


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    from vidcap.pipeline.synth import synthesize

    out = tmp_path_factory.mktemp("synth") / "ds"
    synthesize(out, clips=24, seed=3, size=(160, 120), seconds=2.0, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def built_small(synth_small, tmp_path_factory) -> Path:
    from vidcap.pipeline.build import BuildConfig, build

    out = tmp_path_factory.mktemp("build") / "out"
    build(BuildConfig(dataset="msrvtt", root=str(synth_small), out=str(out), workers=2, **SMALL_BUILD))
    return out


def one_line_error(r, prog: str) -> str:
    """The message of a console script's user error, after checking the one user-error path:
    exit status 2 and exactly one line ``PROG: error: ...`` on stderr, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), r.stderr[-3000:]
    return lines[0][len(f"{prog}: error: "):]


def copy_build(src: Path, dst: Path) -> Path:
    """A private copy of a pipeline output (tests must never mutate the session fixtures)."""
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_model(built_small, tmp_path_factory) -> dict[str, Path]:
    """A tiny S2VT trained for one epoch of stage 1 (console scripts, ~15 s) and its model folder
    written by `train export`: {"run", "ckpt", "model"}. Its captions are poor; the tests of export,
    `caption` and `caption serve` check behaviour, not quality."""
    import os
    import subprocess

    root = tmp_path_factory.mktemp("tiny-model")
    run, model = root / "run", root / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv in ([tool("train"), "--stage", "1", "--data", str(built_small), "--run", str(run), "--preset", "tiny",
                  "epochs=1", "num_workers=0", "--quiet"],
                 [tool("train"), "export", "--ckpt", str(run / "stage1" / "best.pt"), "--out", str(model)]):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    return {"run": run, "ckpt": run / "stage1" / "best.pt", "model": model}


def attack_table() -> tuple[dict, object]:
    """A table of hostile-input rows and the decorator that registers one: ``@attack("ROW")`` on a
    function (request, tmp_path) that runs the attack and asserts (tests/test_hostile_*.py)."""
    rows: dict = {}

    def attack(row: str):
        def deco(fn):
            rows[row] = fn
            return fn

        return deco

    return rows, attack
