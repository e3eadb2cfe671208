"""examples/ trains other models from the same shards, self-contained (torch,
webdataset and the standard library; at most 80 lines), and CI runs them on a tiny build;
an example of vidcap's own Python API imports vidcap (and decord, to show frames decoded elsewhere);
tests/test_api.py runs it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from conftest import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_an_example_is_self_contained(script):
    source = script.read_text()
    assert len(source.splitlines()) <= 80
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    allowed = {"vidcap", "decord"} if "vidcap" in roots else {"torch", "webdataset"}
    assert roots - set(sys.stdlib_module_names) <= allowed, roots


def test_the_action_classifier_trains_from_a_tiny_build(built_small):
    r = subprocess.run([sys.executable, str(REPO / "examples" / "action_from_shards.py"), str(built_small),
                        "--epochs", "3"], capture_output=True, text=True, timeout=300, cwd=REPO.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.fullmatch(r"action accuracy on test: (\d\.\d{3}) \(5 clips, (\d) actions in train, chance (\d\.\d{3})\)\n",
                     r.stdout)
    assert m and 0 <= float(m.group(1)) <= 1, r.stdout
