"""results/<profile>/index.html (mdr/report_html.py): the report, every table and figure and each run's config on
one self-contained page. Built here by the real report stage (write_table, write_report) on constructed run
folders of two tables, then read as HTML and, where Chromium is installed, in a real headless browser."""
from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from mdr.grid import load_grid
from mdr.report import write_report, write_table
from mdr.report_html import CONFIG_ANCHOR, RUN_ANCHOR, Page, split_sections, write_page
from tests.browser import Browser, Unavailable, executable
from tests.test_report import BASE, _params, _r1, _table2b, _write

TABLES = ["table2b", "figure4a"]  # a table, and a figure (bars: drawn from metrics.json alone)
HOSTILE = "<script>alert('x')</script> & <img src=x onerror=alert(1)> \"quoted\""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """(grid, results/smoke/) after the aggregate and report stages, the profile's description made hostile."""
    root = tmp_path_factory.mktemp("page")
    params = _params(root, TABLES)
    profile = params / "profiles" / "smoke.yaml"
    data = yaml.safe_load(profile.read_text())
    data["description"] = f"A profile whose description is HTML: {HOSTILE}"
    profile.write_text(yaml.safe_dump(data))
    grid = load_grid("smoke", params, use_tuned=False)
    for cell in grid.tables["figure4a"].cells:
        _write(root / "runs", grid, cell, _r1(BASE))
    _table2b(root / "runs", grid)  # after figure4a: its 512-d cells are table2b's runs
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # results/<profile>/ is relative to the working directory
        for name in TABLES:
            write_table(grid, name, root / "runs")
        write_report(grid, root / "runs")
    return grid, root / "results" / "smoke"


class Parsed(HTMLParser):
    """What a page holds: its tables (rows of cell texts), every URL-valued attribute, tags, <pre> by id."""

    URL_ATTRIBUTES = {"src", "href", "srcset", "action", "formaction", "data", "poster", "background", "xlink:href"}

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.urls: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self.styles: list[str] = []
        self.pre: dict[str, str] = {}
        self.images: list[dict[str, str]] = []
        self._cell: list[str] | None = None
        self._pre: str | None = None
        self._style = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.urls += [(tag, k, v or "") for k, v in attrs.items() if k in self.URL_ATTRIBUTES]
        if "style" in attrs:
            self.styles.append(attrs["style"] or "")
        if tag == "img":
            self.images.append(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "pre":
            self._pre = attrs.get("id") or ""
            self.pre[self._pre] = ""
        elif tag == "style":
            self._style = True

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "pre":
            self._pre = None
        elif tag == "style":
            self._style = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._pre is not None:
            self.pre[self._pre] += data
        if self._style:
            self.styles.append(data)


def _plain(cell: str) -> str:
    """A Markdown cell as the page shows it: no **bold** or `code` marks."""
    return cell.replace("**", "").replace("`", "").strip()


def markdown_tables(text: str) -> list[list[list[str]]]:
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        if block:
            rows = [[_plain(c) for c in line.strip().strip("|").split("|")] for line in block]
            tables.append([rows[0]] + rows[2:])  # the header, then the rows after the |---| line
            block = []
    return tables


def expected_tables(grid, folder: Path) -> list[list[list[str]]]:
    """Every Markdown table of the results folder in the page's order: REPORT.md's, its Tables section replaced
    by each table's own file."""
    out = []
    for heading, text in split_sections((folder / "REPORT.md").read_text()):
        if heading == "Tables":
            for name in grid.tables:
                out += markdown_tables((folder / f"{name}.md").read_text())
        else:
            out += markdown_tables(text)
    return out


def test_the_page_holds_every_table_with_every_row(results):
    grid, folder = results
    page = Parsed((folder / "index.html").read_text())
    expected = expected_tables(grid, folder)
    assert len(expected) >= 2 + 2 + 2 + 1  # verdicts of two tables, two dataset blocks of each table, data
    assert page.tables == expected
    assert all(len(table) > 1 for table in page.tables)  # a header and rows
    comparisons = (folder / "comparisons.csv").read_text().count("\n") - 1
    verdict_rows = sum(len(t) - 1 for t in page.tables if t[0][-1] == "verdict")
    assert verdict_rows == comparisons == 6 + 24


def test_the_page_embeds_every_figure_and_asks_for_nothing_outside(results):
    grid, folder = results
    text = (folder / "index.html").read_text()
    page = Parsed(text)
    pngs = sorted(folder.glob("*.png"))
    assert [p.name for p in pngs] == ["figure4a.png"]
    assert len(page.images) == len(pngs)
    prefix = "data:image/png;base64,"
    assert base64.b64decode(page.images[0]["src"][len(prefix):]) == pngs[0].read_bytes()
    assert page.images[0]["alt"] == grid.tables["figure4a"].definition.title
    # every src and href is an anchor of the page or a data: URI (a CSV download); no script, no font, no frame
    assert page.urls and all(v.startswith(("#", "data:")) for _, _, v in page.urls), \
        [u for u in page.urls if not u[2].startswith(("#", "data:"))]
    assert not {"script", "link", "iframe", "object", "embed", "base", "form"} & set(page.tags)
    assert not any("url(" in s or "@import" in s for s in page.styles)
    assert "default-src 'none'" in text  # and the browser is told so (Content-Security-Policy)
    anchors = {v[1:] for _, k, v in page.urls if v.startswith("#")}
    ids = set(re.findall(r' id="([^"]+)"', text))
    assert anchors <= ids, anchors - ids  # every link lands on the page


def test_every_text_is_escaped(results):
    _, folder = results
    text = (folder / "index.html").read_text()
    assert "<script" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt; " \
           "&quot;quoted&quot;" in text
    page = Page(folder, {"table2b"})
    assert page.inline("a <b> & `<i>` **x<y**") == "a &lt;b&gt; &amp; <code>&lt;i&gt;</code> <strong>x&lt;y</strong>"
    # another site, a path outside, a file that is not here: printed, never linked
    for target in ("https://example.com/x.csv", "//cdn.example/x.csv", "/etc/passwd", "../runs.csv", "nothere.csv",
                   "javascript:alert(1)"):
        assert "<a " not in page.inline(f"[t]({target})"), target
        assert "<img" not in page.inline(f"![t]({target})"), target
    assert page.inline("[the table](table2b.md)") == '<a href="#table2b">the table</a>'
    assert page.inline("[all](comparisons.csv)").startswith('<a download="comparisons.csv" href="data:text/csv;base64,')


def test_each_run_has_its_resolved_config_one_click_away(results):
    grid, folder = results
    text = (folder / "index.html").read_text()
    page = Parsed(text)
    runs = [line.split(",", 1)[0] for line in (folder / "runs.csv").read_text().splitlines()[1:]]
    assert runs == list(grid.runs)
    for rid in runs:
        assert f'<details id="{RUN_ANCHOR}{rid}">' in text
        assert yaml.safe_load(page.pre[CONFIG_ANCHOR + rid]) == grid.runs[rid].config.model_dump(mode="json")
    # each table lists its runs, each a link to its config
    for name, table in grid.tables.items():
        section = text[text.index(f'<section id="{name}">'):]
        section = section[:section.index("</section>")]
        for rid in {r for cell in table.cells for r in cell.run_ids}:
            assert f'href="#{CONFIG_ANCHOR}{rid}"' in section


def test_the_page_is_rebuilt_from_the_results_folder_alone(results):
    """`report --page-only`: the same page from the results files and the grid, without the run folders."""
    grid, folder = results
    written = (folder / "index.html").read_text()
    assert write_page(grid, folder).read_text() == written
    verdicts = written.index('id="verdicts"')
    assert written.index("<nav>") < verdicts < written.index('id="tables"') < written.index('id="runs"')
    for name in TABLES:  # REPORT.md's reading of each table, under the table
        section = written[written.index(f'<section id="{name}">'):]
        assert section.index("<h4>Reading</h4>") < section.index("</section>")


def test_missing_tables_are_said_not_aggregated(results, tmp_path):
    grid, folder = results
    (tmp_path / "REPORT.md").write_text((folder / "REPORT.md").read_text())
    page = Parsed(write_page(grid, tmp_path).read_text())
    assert not page.images
    text = (tmp_path / "index.html").read_text()
    assert "Not aggregated yet: <code>table2b.md</code> is missing." in text
    assert "[figure not available" not in text  # REPORT.md's own image links are not shown


CONTROL = """<!DOCTYPE html><html><head><link rel="stylesheet" href="https://fonts.example.invalid/f.css"></head>
<body><img src="http://example.invalid/x.png"><img src="//cdn.example.invalid/y.png"></body></html>"""
# every image's state, every table's rows (thead and tbody) as cell texts, the scripts
IMAGES = "[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
ROWS = "[...document.querySelectorAll('table')].map(t => [...t.rows].map(r => [...r.cells].map(c => c.textContent.trim())))"


def test_in_a_real_browser_nothing_is_fetched_every_figure_renders_every_table_has_its_rows(results, tmp_path):
    try:
        executable()
    except Unavailable as e:
        pytest.skip(str(e))
    grid, folder = results
    url = (folder / "index.html").as_uri()
    control = tmp_path / "control.html"
    control.write_text(CONTROL)
    with Browser(tmp_path / "profile") as browser:
        # the check sees a page's requests: this one asks for a style sheet and two images elsewhere
        asked = [u for u in browser.load(control.as_uri()) if u != control.as_uri()]
        assert sorted(asked) == ["file://cdn.example.invalid/y.png", "http://example.invalid/x.png",
                                 "https://fonts.example.invalid/f.css"]
        assert browser.evaluate("[...document.images].map(i => i.naturalWidth)") == [0, 0]

        requested = browser.load(url)
        assert requested[0] == url
        assert [u[:40] for u in requested[1:] if not u.startswith("data:")] == []  # only its own data: URIs
        images = browser.evaluate(IMAGES)
        assert len(images) == 1 and all(done and width > 0 and height > 0 for done, width, height in images), images
        assert browser.evaluate(ROWS) == expected_tables(grid, folder)
        assert browser.evaluate("document.scripts.length") == 0
        # one click from a table's run list to a run's config: the browser opens the <details> holding it
        rid = grid.tables["table2b"].cells[0].run_ids[0]
        opened = (f"document.querySelector('a[href=\"#{CONFIG_ANCHOR}{rid}\"]').click();"
                  f"new Promise(r => setTimeout(() => r(document.getElementById('{RUN_ANCHOR}{rid}').open), 200))")
        assert browser.evaluate(f"document.getElementById('{RUN_ANCHOR}{rid}').open") is False
        assert browser.evaluate(opened) is True
