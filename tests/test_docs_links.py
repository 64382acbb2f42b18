"""Every relative link in the README and docs resolves, and every results file they cite exists."""
import itertools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "models" / "shapes" / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCED = re.compile(r"```.*?```", re.S)
CODE = re.compile(r"`([^`]+)`")
RESULTS = re.compile(r"docs/results/(?:\{[^{}\s]*\}|[^`\s,;()\[\]{}])+")
# Stage pages that other work in progress is writing (the README links to them by name). A link to one of them may be
# dangling only while the page does not exist; delete each name here once its page has landed.
PENDING: set[str] = set()  # every stage page has landed


def _expand_braces(path: str) -> list[str]:
    """`a_{x,y}.json` -> [`a_x.json`, `a_y.json`] (shell brace expansion, as the docs write paths)."""
    parts = re.split(r"\{([^{}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def _relative_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    text = FENCED.sub("", text)  # code blocks hold commands, not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    if not page.exists():
        pytest.skip(f"{page.name} not written")
    targets = [(page.parent / t.split("#")[0]).resolve() for t in _relative_links(page)]
    missing = [str(t.relative_to(ROOT)) if t.is_relative_to(ROOT) else str(t) for t in targets if not t.exists()]
    missing = [t for t in missing if t not in PENDING]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_results_exist(page):
    if not page.exists():
        pytest.skip(f"{page.name} not written")
    missing = []
    text = page.read_text(encoding="utf-8")
    code = FENCED.findall(text) + CODE.findall(FENCED.sub("", text))  # command blocks and inline code
    for cited in (path for span in code for path in RESULTS.findall(span)):
        if any(c in cited for c in "$*<[") or "..." in cited:
            continue  # a pattern or a placeholder in a command, not a file name
        missing += [p for p in _expand_braces(cited.rstrip(".:")) if not (ROOT / p).exists()]
    assert not missing, f"{page.relative_to(ROOT)} cites results that do not exist: {missing}"


def test_the_checks_catch_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md) [gone](nowhere.md) [web](https://example.org) [anchor](#x)\n"
                    "```\n[in code](not/checked.md)\n```\n", encoding="utf-8")
    assert _relative_links(page) == ["page.md", "nowhere.md"]
    assert _expand_braces("docs/results/a_{x,y}.json") == ["docs/results/a_x.json", "docs/results/a_y.json"]
    assert RESULTS.findall("see docs/results/a_{x,y}.json, and docs/results/b/") == ["docs/results/a_{x,y}.json",
                                                                                      "docs/results/b/"]
