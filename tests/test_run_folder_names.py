"""train/run_folder.py's claim, checked: no other Python file of the repository (the packages,
bench/, examples/) spells a run folder's file or folder name in code -- each imports it from
run_folder.py (or, for a recipe's folder, reads it from train/recipes.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

from vidcap.train import run_folder
from vidcap.train.recipes import RECIPES

FOLDERS = ("vidcap", "shards", "evalkit", "pipeline", "model", "train", "caption", "bench", "examples")
OWNER = REPO / "train" / "run_folder.py"
NAMES = {v for k, v in vars(run_folder).items() if k.isupper() and isinstance(v, str)}
# config.json is also a model folder's (model/folder.py owns that one): it cannot tell the two apart
FILES = {n for n in NAMES if "." in n and n != run_folder.CONFIG}
DIRS = {n for n in NAMES if "." not in n and n != run_folder.LOCK} | {r.dir for r in RECIPES.values()}


def spellings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of each string in code that is a run-folder name: a file name anywhere in a path
    literal, a folder name joined with `/` or inside a path literal, an ``eval-...`` folder, a
    ``stage{N}`` f-string joined with `/` (a run's own name, ``f"stage{n}-bf16"``, is not one). Prose (any string with a space: docstrings, help, messages) is not code."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not any(c.isspace() for c in node.value):
            parts = set(node.value.split("/"))
            if parts & FILES or ("/" in node.value and parts & DIRS) or node.value.startswith("eval-"):
                found.append((node.lineno, node.value))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and side.value in DIRS:
                    found.append((node.lineno, side.value))
                if isinstance(side, ast.JoinedStr) and isinstance(side.values[0], ast.Constant):
                    head = side.values[0].value  # a stage folder f"stage{n}", an eval folder f"eval-{split}..."
                    if (head == "stage" and len(side.values) == 2) or head.startswith("eval-"):
                        found.append((node.lineno, f"{head}{{...}}"))
    return found


def test_the_checker_finds_what_it_looks_for():
    code = ('p = run / "stage3" / "best.pt"\nq = d / "eval-test-beam3"\nr = root / f"stage{s}" / "robustness"\n'
            'run = work / f"stage{s}-bf16"\nhelp = "checkpoint (e.g. RUN/stage3/best.pt)"\nkey = report["features"]\n')
    assert sorted(text for _, text in spellings(ast.parse(code))) == \
        sorted(["stage3", "best.pt", "eval-test-beam3", "robustness", "stage{...}"])


def test_only_run_folder_py_spells_a_run_folder_name():
    found = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if path != OWNER:
                rel = Path(path).relative_to(REPO)
                found += [f"{rel}:{line}: {text!r}" for line, text in spellings(ast.parse(path.read_text("utf-8")))]
    assert not found, "spelled outside train/run_folder.py (import the name from it):\n" + "\n".join(found)
