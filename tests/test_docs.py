"""Issue 21, item 4: the reference is a documentation site (MkDocs Material, docs/ + mkdocs.yml)
built in strict mode by `make test`, so a broken link, a broken anchor or a page missing from the
navigation fails CI; the README keeps the two set-up commands, the tour and a map, and links there."""

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
