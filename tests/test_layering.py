"""The rooms and their floors, read from the source with `ast` (nothing imported). No
import circle between files; no package imports one above it (vidcap's foundation < shards <
evalkit < pipeline, model < train < caption; pipeline and model are peers that do not import each
other). Every import counts -- at module level, inside functions and under TYPE_CHECKING -- since a
lazy import is still a dependency. The one exception is the namespace's root, vidcap/__init__.py,
which exposes the Python API (`vidcap.load`) lazily and must do so only inside a function."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Mapping
from pathlib import Path

from conftest import REPO

LAYERS = ({"vidcap"}, {"vidcap.shards"}, {"vidcap.evalkit"}, {"vidcap.pipeline", "vidcap.model"},
          {"vidcap.train"}, {"vidcap.caption"})
LEVEL = {pkg: n for n, layer in enumerate(LAYERS) for pkg in layer}
ROOT = "vidcap"  # vidcap/__init__.py: the namespace, above every room by design (its lazy API)


def package_dirs() -> dict[str, Path]:
    """vidcap.* package -> its folder, from pyproject.toml's package-dir (what the wheel installs)."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {pkg: REPO / folder for pkg, folder in tool["package-dir"].items()}


def modules(dirs: Mapping[str, Path]) -> dict[str, Path]:
    out = {}
    for pkg, folder in dirs.items():
        for f in folder.glob("*.py"):
            out[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return out


def imports(source: str, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported vidcap module, line, at module level) for each import of the source. ``from P import
    M`` where P.M is a module is an import of P.M; of any other name, of P."""
    tree = ast.parse(source)
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        found += [(n, node.lineno, id(node) in top) for n in names if n in known]
    return found


def package_of(module: str, packages: set[str]) -> str:
    return max((p for p in packages if module == p or module.startswith(p + ".")), key=len)


def violations(mods: Mapping[str, Path], sources: Mapping[str, str]) -> list[str]:
    """Every import that climbs a floor or crosses to a peer, as 'FILE:LINE: A imports B'."""
    packages = set(LEVEL)
    bad = []
    for mod, source in sources.items():
        src_pkg = package_of(mod, packages)
        for target, line, at_top in imports(source, set(mods)):
            dst_pkg = package_of(target, packages)
            if dst_pkg == src_pkg:
                continue
            if mod == ROOT and dst_pkg == "vidcap.caption" and not at_top:
                continue  # the lazy `vidcap.load`
            if mod == ROOT or LEVEL[dst_pkg] >= LEVEL[src_pkg]:
                bad.append(f"{mods[mod]}:{line}: {mod} ({src_pkg}) imports {target} ({dst_pkg})")
    return bad


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one file (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_installed_package_has_a_floor():
    assert set(package_dirs()) == set(LEVEL)


def test_no_package_imports_one_above_it_or_a_peer():
    mods = modules(package_dirs())
    assert len(mods) > 60
    assert violations(mods, {m: f.read_text() for m, f in mods.items()}) == []


def test_no_import_circle_between_files():
    mods = modules(package_dirs())
    graph = {m: {t for t, _, _ in imports(f.read_text(), set(mods)) if t != m} for m, f in mods.items()}
    assert cycles(graph) == []


def test_the_checks_catch_what_they_look_for():
    mods = {"vidcap": Path("vidcap/__init__.py"), "vidcap.shards.reader": Path("shards/reader.py"),
            "vidcap.train.loop": Path("train/loop.py"), "vidcap.model.base": Path("model/base.py"),
            "vidcap.pipeline.frames": Path("pipeline/frames.py"), "vidcap.caption.api": Path("caption/api.py")}
    sources = {"vidcap": "def __getattr__(name):\n    from vidcap.caption import api\n",
               "vidcap.shards.reader": "def f():\n    from vidcap.train.loop import Trainer\n",  # lazy, still up
               "vidcap.train.loop": "from vidcap.model import base\n",  # down: fine
               "vidcap.model.base": "import vidcap.pipeline.frames\n",  # a peer
               "vidcap.pipeline.frames": "", "vidcap.caption.api": ""}
    found = violations(mods, sources)
    assert [line.split(": ", 1)[1] for line in found] == [
        "vidcap.shards.reader (vidcap.shards) imports vidcap.train.loop (vidcap.train)",
        "vidcap.model.base (vidcap.model) imports vidcap.pipeline.frames (vidcap.pipeline)"]
    assert violations(mods, {**sources, "vidcap": "from vidcap.caption import api\n"})  # the root, at module level
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
