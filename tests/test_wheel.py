"""`pip wheel . --no-deps` builds one wheel; installed into a fresh virtual
environment with no repository on the path, it gives the four commands and `import vidcap`, and
nothing generic lands at the top of site-packages (`import model`, `import train` fail there).

Nothing is downloaded: the wheel is built without build isolation (this environment's setuptools),
installed with `pip --no-deps --no-index`, and the fresh venv reaches the dependencies through a .pth
file naming this environment's site-packages -- a .pth adds a folder to sys.path without running
the editable install's finder that lives there, so `vidcap` can only come from the wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "site", "demo", "runs",
                              "test-artifacts", ".pytest_cache", ".ruff_cache", "tests")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (the build leaves nothing in the repository)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=SKIP)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "--no-index", "-w", str(root / "dist")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    wheels = list((root / "dist").iterdir())
    assert [w.name for w in wheels] == ["vidcap-0.1.0-py3-none-any.whl"]
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv (no system site-packages) with the wheel installed and the dependencies on a .pth."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()] or [sysconfig.get_paths()["purelib"]]
    (purelib / "dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return env_dir


def _run(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**env, "OMP_NUM_THREADS": "1", "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}"})


def test_the_wheel_holds_one_namespace_and_the_four_commands(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = z.read("vidcap-0.1.0.dist-info/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"vidcap", "vidcap-0.1.0.dist-info"}
    for needed in ("vidcap/__init__.py", "vidcap/caption/api.py", "vidcap/caption/serve_page.html",
                   "vidcap/shards/reader.py", "vidcap/model/s2vt.py", "vidcap/train/run_folder.py"):
        assert needed in names
    for script in ("caption = vidcap.caption.cli:main", "evalkit = vidcap.evalkit.cli:main",
                   "pipeline = vidcap.pipeline.cli:main", "train = vidcap.train.cli:main"):
        assert script in entry_points


def test_installed_it_runs_with_no_repository_on_the_path(venv, tmp_path):
    python = str(venv / "bin" / "python")
    r = _run(venv, python, "-c", "import json, sys, vidcap, vidcap.caption.api; print(vidcap.__file__); "
             "print(json.dumps(sys.path))", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    where, path = Path(r.stdout.splitlines()[0]), json.loads(r.stdout.splitlines()[1])
    assert where.is_relative_to(venv) and not where.is_relative_to(REPO), where
    sources = [p for p in path if p and Path(p).is_relative_to(REPO) and not Path(p).is_relative_to(REPO / ".venv")]
    assert sources == []  # only the dependencies' site-packages, which may live in the repository's .venv
    for name in ("caption", "pipeline", "train", "evalkit"):
        r = _run(venv, str(venv / "bin" / name), "--help", cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.startswith(f"usage: {name}"), (name, r.stderr[-2000:])
    for generic in ("model", "train", "pipeline", "evalkit", "caption", "shards"):
        r = _run(venv, python, "-c", f"import {generic}", cwd=tmp_path)
        assert r.returncode == 1 and f"No module named '{generic}'" in r.stderr, (generic, r.stderr[-2000:])


def test_installed_it_captions_as_the_repository_does(venv, tiny_model, synth_small, tmp_path):
    """The decoder subprocess (`python -m vidcap.pipeline.clip_worker`) and the model folder work from
    the installed package too."""
    from vidcap.caption.api import load

    clip = synth_small / "videos" / "video1.mp4"
    with load(tiny_model["model"]) as cap:
        want = cap.caption(clip)
    r = _run(venv, str(venv / "bin" / "python"), "-c",
             f"import vidcap; print(vidcap.load({str(tiny_model['model'])!r}).caption({str(clip)!r}))", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == want
