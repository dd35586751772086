"""Documentation that travels with the project: every document the code, params and README cite is in the
repository, and a cited section (§N) exists in it."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["mdr", "pipeline", "params", "tests", "benchmarks"]
CITATION = re.compile(r"(docs/[\w./-]+\.md)(?: §(\d+(?:\.\d+)?))?")
# a citation of a document kept outside the repository (the issue: 18 of them)
OUTSIDE = re.compile(r"(?<![\w/])(?:\.\./)?(?:shared/)?reference/(?!paper_results\.csv|\*\.csv)[\w.-]+\.md")


def _files():
    for top in SCANNED:
        yield from (p for p in (ROOT / top).rglob("*") if p.suffix in (".py", ".yaml", ".md", ".toml") and p.is_file())
    yield from (ROOT / name for name in ("README.md", "Snakefile", "pyproject.toml"))
    yield from (ROOT / "docs").glob("*.md")


def test_every_cited_document_and_section_is_in_the_repository():
    cited = 0
    for path in _files():
        text = path.read_text(errors="replace")
        assert not OUTSIDE.search(text), f"{path.relative_to(ROOT)} cites {OUTSIDE.search(text).group(0)}, not in the repository"
        for doc, section in CITATION.findall(text):
            if path.name == Path(__file__).name:
                continue
            target = ROOT / doc
            assert target.is_file(), f"{path.relative_to(ROOT)} cites {doc}, which does not exist"
            if section:
                headings = re.findall(r"^#+ (\d+(?:\.\d+)?)\.? ", target.read_text(), flags=re.M)
                assert section in headings, f"{path.relative_to(ROOT)} cites {doc} §{section}; its sections: {headings}"
            cited += 1
    assert cited >= 20  # the code's citations were found (a broken pattern would pass vacuously)
