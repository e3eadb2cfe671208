"""The reference is a documentation site (MkDocs Material, docs/ + mkdocs.yml) built in strict mode by
`make test`, so a broken link, a broken anchor or a page missing from the navigation fails CI; the
README keeps the two set-up commands, the tour and a map, and links there. And the docs agree with the
code: every flag they (and the Makefile) name is in that command's --help, every repository path they
name exists, and each README figure is written by the script its caption names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=300, env=ENV)


def test_the_site_builds_in_strict_mode_with_every_page(tmp_path):
    r = _build(REPO, tmp_path / "site")
    assert r.returncode == 0, r.stderr[-3000:]
    pages = sorted(p.stem for p in (REPO / "docs").glob("*.md"))
    for page in pages:
        html = tmp_path / "site" / ("index.html" if page == "index" else f"{page}/index.html")
        assert html.exists(), page
    text = (tmp_path / "site" / "contributing" / "index.html").read_text()
    assert "find the shard reader" in text and 'id="layers"' in text


@pytest.mark.parametrize("damage, named", [
    (lambda d: (d / "api.md").write_text((d / "api.md").read_text() + "\n[gone](no-such-page.md)\n"),
     "no-such-page.md"),
    (lambda d: (d / "cli.md").write_text((d / "cli.md").read_text() + "\n[gone](contributing.md#no-such-anchor)\n"),
     "no-such-anchor"),
    (lambda d: (d / "orphan.md").write_text("# Not in the navigation\n"), "orphan.md"),
], ids=["broken-link", "broken-anchor", "page-not-in-nav"])
def test_a_broken_link_or_a_missing_page_fails_the_build(tmp_path, damage, named):
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    damage(tmp_path / "docs")
    r = _build(tmp_path, tmp_path / "site")
    assert r.returncode != 0 and named in r.stderr, r.stderr[-3000:]


def test_the_readme_is_the_set_up_the_tour_and_a_map():
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set up and run", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in setup.strip().splitlines()] == ["make demo", "make test"]
    assert "## The tour" in text and len(text.splitlines()) < 120
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert "docs/index.md" in links
    for link in links:
        assert (REPO / link).exists(), link
    for page in (REPO / "docs").glob("*.md"):  # every page is reachable from the README's map
        assert f"docs/{page.name}" in links or page.name == "index.md", page.name


# ---- the docs against the code: flags, paths and figures, checked mechanically ---------------------

TOOLS = {"train": ("eval", "export", "probe", "robustness", "ablate"), "pipeline": ("synth", "build", "inspect"),
         "caption": ("serve",), "evalkit": ("score",)}
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _snippets(path: Path) -> list[str]:
    """The code a file shows: inline code spans and fenced blocks of a Markdown page, recipe lines of
    the Makefile; backslash-continued lines joined."""
    text = path.read_text()
    if path.name == "Makefile":
        text = text.replace("\\\n", " ")
        return [line.replace("$(VENV)/bin/", "") for line in text.splitlines() if line.startswith("\t")]
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    return [*(b.replace("\\\n", " ") for b in blocks), *re.findall(r"`([^`\n]+)`", prose)]


def _commands(path: Path) -> list[tuple[str, str | None, list[str]]]:
    """(tool, subcommand or None, the --flags written after it) for each command line a file shows."""
    out = []
    for snippet in _snippets(path):
        for part in re.split(r"\||&&|;|\n|#", snippet):
            m = re.match(r"\s*(?:\S*/bin/)?(train|pipeline|caption|evalkit)(?=\s|$)(.*)", part)
            if not m:
                continue
            tool, rest = m.group(1), m.group(2).split()
            sub = rest[0] if rest and rest[0] in TOOLS[tool] else None
            flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(2))
            if flags:
                out.append((tool, sub, flags))
    return out


def test_every_flag_the_docs_and_the_makefile_name_is_in_that_commands_help():
    """A flag named for a command exists in that command's --help (hidden old spellings do not count)."""
    from conftest import tool as console_script

    helps: dict[tuple[str, str | None], str] = {}
    wrong = []
    for path in [*DOCS, REPO / "Makefile"]:
        for tool, sub, flags in _commands(path):
            if (tool, sub) not in helps:
                r = subprocess.run([console_script(tool), *([sub] if sub else []), "--help"], capture_output=True,
                                   text=True, timeout=120)
                assert r.returncode == 0, r.stderr[-2000:]
                helps[tool, sub] = r.stdout
            wrong += [f"{path.name}: {tool} {sub or ''} {f}".replace("  ", " ") for f in flags
                      if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", helps[tool, sub])]
    assert len(helps) >= 8, sorted(helps)  # the check reads the commands it is meant to
    assert wrong == []


REPO_DIRS = ("bench", "caption", "docs", "evalkit", "examples", "model", "pipeline", "shards", "tests", "train",
             "vidcap")


def _ignored(rel: str) -> bool:
    """Whether .gitignore covers a path: a doc may name an output a script writes but git never keeps."""
    from fnmatch import fnmatch

    patterns = [p.strip().lstrip("/").rstrip("/") for p in (REPO / ".gitignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch(pre, pat) or fnmatch(parts[i], pat) for pat in patterns for i, pre in enumerate(prefixes))


def _paths(text: str) -> set[str]:
    """Repository file paths named in code spans and links (braces expanded: `a.{json,md}`); a path
    after a colon is a `git show REV:path` of a file that was removed, and is not checked."""
    found = set()
    pattern = rf"(?<![\w:./-])((?:{'|'.join(REPO_DIRS)})/[\w./{{}},-]*\.[\w{{}},]+)"
    named = [span or link for span, link in re.findall(r"`([^`]+)`|\]\(([^)#]+)", text)]
    for raw in re.findall(pattern, "\n".join(named)):
        m = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", raw)
        found |= {m.group(1) + alt + m.group(3) for alt in m.group(2).split(",")} if m else {raw}
    # NAME, NNNNNN, DIR: placeholders; shards/*.tar|json: a build's shard folder, not the package
    return {p.rstrip(".,") for p in found
            if not re.search(r"[A-Z]{3,}", p) and not (p.startswith("shards/") and not p.endswith(".py"))}


def test_every_repository_path_a_doc_names_exists():
    missing = []
    for path in DOCS:
        base = path.parent.relative_to(REPO)
        for rel in sorted(_paths(path.read_text())):
            here = REPO / rel if not (REPO / base / rel).exists() else REPO / base / rel
            if not here.exists() and not _ignored(rel):
                missing.append(f"{path.relative_to(REPO)}: {rel}")
    assert missing == []


def test_each_readme_figure_is_written_by_the_script_its_caption_names():
    """A figure is not copied by hand: the caption above it names a script (`bench/....py` or a
    console script's subcommand), and that script's source writes the figure's path."""
    lines = (REPO / "README.md").read_text().splitlines()
    figures = [(i, m.group(1)) for i, line in enumerate(lines) if (m := re.search(r"!\[[^\]]*\]\(([^)]+)\)", line))]
    assert figures
    for i, figure in figures:
        caption = " ".join(lines[max(0, i - 3): i])
        scripts = re.findall(r"`((?:bench|model|train|pipeline|caption|evalkit)/[\w/]+\.py)", caption)
        assert scripts, f"the caption of {figure} names no script that writes it"
        assert any(figure in (REPO / s).read_text() for s in scripts), f"{figure}: {scripts} do not write it"


def test_each_test_file_opens_by_saying_what_it_checks():
    """A test module's docstring starts with what it checks, not with the issue that asked for it."""
    import ast

    opening = {p.name: (ast.get_docstring(ast.parse(p.read_text())) or "") for p in (REPO / "tests").glob("test_*.py")}
    assert [n for n, doc in opening.items() if not doc or re.match(r"issue\b", doc, re.I)] == []
