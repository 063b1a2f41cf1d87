"""The README and the pages it links: every relative link (and image) points at a file that exists,
and every `#anchor` at a heading of the page it names. Links inside code are not links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "infra" / "README.md", *sorted((REPO / "docs").glob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def links(text: str) -> list[str]:
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    return [target for target in LINK.findall(prose) if not re.match(r"[a-z]+:", target)]


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", FENCE.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page.read_text()):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(REPO) if file.is_relative_to(REPO) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_at_something_that_exists(page):
    assert broken_links(page) == [], page


def test_the_link_check_finds_the_links():
    """Guards the check itself: a pattern that matched nothing would pass every page."""
    readme = links((REPO / "README.md").read_text())
    assert "docs/doors.md" in readme and "docs/mlflow-runs.png" in readme, readme


def test_every_docs_page_is_reachable_from_the_readme():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in links((REPO / "README.md").read_text())}
    assert [p.name for p in (REPO / "docs").glob("*.md") if p.resolve() not in linked] == []


def test_the_readme_opens_with_the_two_commands():
    first_lines = (REPO / "README.md").read_text().splitlines()[:10]
    for command in ("make run", "make test"):
        assert any(line.startswith(command) for line in first_lines), command
