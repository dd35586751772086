"""results/<profile>/index.html: the whole report on one self-contained page, for a browser with no network.

Built from the files of the results folder alone (REPORT.md, each table's Markdown and PNG, comparisons.csv,
runs.csv) and the grid (each run's resolved config), so it is rebuilt without the run folders
(`python -m pipeline report --page-only`). The page opens like REPORT.md with its verdicts; then every table
and figure with its caption, what ran and the reading of it; the data section; and every run of runs.csv
as a <details> holding its resolved config (YAML), one click away. Nothing is fetched: images are base64
data: URIs, the CSS is inline, the CSV files are data: downloads, links are anchors of the page, and a
Content-Security-Policy forbids every other source. The Markdown is this project's own output (mdr/report.py):
headings, paragraphs, pipe tables, quotes, bullet lists, images, `code`, **bold** and links; every piece of
text is HTML-escaped.
"""
from __future__ import annotations

import base64
import csv
import html
import math
import re
from pathlib import Path
from typing import Callable

from mdr import layout
from mdr.grid import Grid

# No script, no font, no request: images and downloads are data: URIs, styles are the inline <style>.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 78rem; padding: 1rem 2rem; color: #1b1b1b; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; margin-top: 2.5rem; } h3 { margin-top: 1.8rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .88rem; }
th, td { border: 1px solid #d0d0d0; padding: .2rem .5rem; text-align: left; vertical-align: top; }
td { white-space: nowrap; } .wide { overflow-x: auto; }
th { background: #f1f1f1; } tr:nth-child(even) td { background: #fafafa; }
td.num, th.num { text-align: right; }
blockquote { border-left: 4px solid #c9d7e8; margin: .6rem 0; padding: .1rem .9rem; background: #f5f8fc; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #e2e2e2; }
figcaption { font-size: .9rem; color: #444; }
code, pre { font-family: ui-monospace, monospace; font-size: .85rem; }
pre { background: #f6f6f6; padding: .6rem; overflow-x: auto; }
details { margin: .15rem 0; } summary { cursor: pointer; }
nav > ul > li > ul { columns: 2; font-size: .92rem; } .muted { color: #666; }
"""
RUN_ANCHOR = "run-"  # a run's <details>
CONFIG_ANCHOR = "config-"  # its config inside: a link there opens the <details> (the browser reveals the target)
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_IMAGE_LINE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_INLINE = re.compile(r"(!?)\[([^\]]+)\]\(([^)\s]+)\)|\*\*(.+?)\*\*")
_NUMBER = re.compile(r"^[-+−]?\d[\d.,]*( ± \d[\d.]*)?$")  # a value cell, right-aligned
_SEPARATOR = re.compile(r"^\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_READING = re.compile(r"^### Reading of (\S+)\s*$")
MIME = {".csv": "text/csv", ".md": "text/markdown", ".tex": "application/x-tex", ".json": "application/json",
        ".png": "image/png"}


def data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


class Page:
    """Renders this project's Markdown into HTML, resolving links and images against the results folder."""

    def __init__(self, results: Path, anchors: set[str]):
        self.results = results
        self.anchors = anchors  # table names with a section on this page

    # ---- inline ----
    def link(self, text: str, target: str) -> str:
        """An anchor of the page, or a data: download of a file of the results folder; anything else (another
        site, a path outside) is printed, not linked."""
        label = self.inline(text)
        if target.startswith("#"):
            return f'<a href="{html.escape(target)}">{label}</a>'
        if not _SCHEME.match(target) and not target.startswith("/"):
            name = Path(target).name
            stem, suffix = Path(name).stem, Path(name).suffix
            if suffix == ".md" and stem in self.anchors:
                return f'<a href="#{html.escape(stem)}">{label}</a>'
            path = self.results / name
            if Path(target).parent == Path(".") and suffix in MIME and path.is_file():
                return (f'<a download="{html.escape(name)}" href="{data_uri(path, MIME[suffix])}">{label}</a>')
        return f"{label} (<code>{html.escape(target)}</code>)"

    def image(self, alt: str, target: str) -> str:
        path = self.results / Path(target).name
        if _SCHEME.match(target) or Path(target).parent != Path(".") or path.suffix != ".png" or not path.is_file():
            return f'<p class="muted">[figure not available: {html.escape(target)}]</p>'
        return (f'<figure><img alt="{html.escape(alt)}" src="{data_uri(path, "image/png")}">'
                f"<figcaption>{html.escape(alt)}</figcaption></figure>")

    def inline(self, text: str) -> str:
        """`code` spans verbatim; elsewhere **bold**, [links](target) and ![images](target); all text escaped."""
        out = []
        for i, part in enumerate(re.split(r"(`[^`]*`)", text)):
            if i % 2:
                out.append(f"<code>{html.escape(part[1:-1])}</code>")
                continue
            pos = 0
            for m in _INLINE.finditer(part):
                out.append(html.escape(part[pos:m.start()]))
                if m.group(4) is not None:
                    out.append(f"<strong>{self.inline(m.group(4))}</strong>")
                elif m.group(1):
                    out.append(self.image(m.group(2), m.group(3)))
                else:
                    out.append(self.link(m.group(2), m.group(3)))
                pos = m.end()
            out.append(html.escape(part[pos:]))
        return "".join(out)

    # ---- blocks ----
    def table(self, lines: list[str]) -> str:
        rows = [_cells(line) for line in lines]
        align: list[bool] = []
        if len(rows) > 1 and _SEPARATOR.match(lines[1]):
            align = [c.endswith(":") and not c.startswith(":") for c in rows[1]]
            header, body = rows[0], rows[2:]
        else:
            header, body = [], rows

        def cell(tag: str, j: int, value: str) -> str:
            right = (j < len(align) and align[j]) or (tag == "td" and _NUMBER.match(value))
            cls = ' class="num"' if right else ""
            return f"<{tag}{cls}>{self.inline(value)}</{tag}>"

        out = ['<div class="wide"><table>']
        if header:
            out.append("<thead><tr>" + "".join(cell("th", j, c) for j, c in enumerate(header)) + "</tr></thead>")
        out.append("<tbody>")
        out += ["<tr>" + "".join(cell("td", j, c) for j, c in enumerate(row)) + "</tr>" for row in body]
        return "\n".join(out + ["</tbody></table></div>"])

    def render(self, text: str, shift: int = 0) -> str:
        """Markdown blocks -> HTML; headings `shift` levels deeper (a table's ## title inside the page's ##)."""
        out: list[str] = []
        lines = text.splitlines()
        i = 0

        def run_of(test: Callable[[str], bool]) -> list[str]:
            nonlocal i
            block = []
            while i < len(lines) and test(lines[i]):
                block.append(lines[i])
                i += 1
            return block

        while i < len(lines):
            line = lines[i].rstrip()
            if not line.strip():
                i += 1
            elif m := _HEADING.match(line):
                level = min(6, len(m.group(1)) + shift)
                out.append(f"<h{level}>{self.inline(m.group(2).strip())}</h{level}>")
                i += 1
            elif m := _IMAGE_LINE.match(line.strip()):
                out.append(self.image(m.group(1), m.group(2)))
                i += 1
            elif line.lstrip().startswith("|"):
                out.append(self.table(run_of(lambda s: s.lstrip().startswith("|"))))
            elif line.startswith(">"):
                quoted = [s[1:].strip() for s in run_of(lambda s: s.startswith(">"))]
                out.append(f"<blockquote><p>{self.inline(' '.join(quoted))}</p></blockquote>")
            elif re.match(r"^[-*] ", line):
                items = [s[2:].strip() for s in run_of(lambda s: bool(re.match(r"^[-*] ", s)))]
                out.append("<ul>" + "".join(f"<li>{self.inline(s)}</li>" for s in items) + "</ul>")
            else:
                para = run_of(lambda s: bool(s.strip()) and not _block_start(s))
                out.append(f"<p>{self.inline(' '.join(s.strip() for s in para))}</p>")
        return "\n".join(out)


def _block_start(line: str) -> bool:
    s = line.strip()
    return bool(_HEADING.match(line) or _IMAGE_LINE.match(s) or s.startswith("|") or line.startswith(">")
                or re.match(r"^[-*] ", line))


def _cells(line: str) -> list[str]:
    s = line.strip()
    s = s[1:] if s.startswith("|") else s
    s = s[:-1] if s.endswith("|") else s
    return [c.strip() for c in s.split("|")]


def split_sections(text: str) -> list[tuple[str, str]]:
    """REPORT.md as (## heading or "" for the opening, body) in order."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines():
        if line.startswith("## "):
            sections.append((line[3:].strip(), []))
        else:
            sections[-1][1].append(line)
    return [(h, "\n".join(body)) for h, body in sections]


def readings(tables_section: str) -> dict[str, str]:
    """REPORT.md's "### Reading of <table>" paragraphs, without their links to the table and its figure (the
    page shows both in full)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in tables_section.splitlines():
        if m := _READING.match(line):
            current = out.setdefault(m.group(1), [])
        elif current is not None and not line.startswith("Full table:") and not _IMAGE_LINE.match(line.strip()):
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in out.items()}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _runs(grid: Grid, results: Path) -> list[dict[str, str]]:
    path = results / "runs.csv"
    if path.is_file():
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    return [{"run": rid} for rid in grid.runs]


def _percent(value: str | None) -> str | None:
    try:
        x = float(value) if value not in (None, "") else math.nan
    except ValueError:
        return None
    return None if math.isnan(x) else f"{100 * x:.1f}"


def runs_section(grid: Grid, results: Path) -> str:
    import yaml

    runs = _runs(grid, results)
    out = [f'<p>{len(runs)} runs ({_download(results, "runs.csv")}). Each one\'s resolved config, as its run '
           "folder's config.yaml holds it: open its line. Its id is a readable slug plus the hash of that config.</p>"]
    for row in runs:
        rid = row["run"]
        facts = []
        if row.get("method"):
            facts.append(row["method"])
        if row.get("dataset"):
            facts.append(row["dataset"] + (f" (for {row['stands_in_for']})" if row.get("stands_in_for") else ""))
        if row.get("backbone"):
            facts.append(row["backbone"])
        if row.get("seed"):
            facts.append(f"seed {row['seed']}")
        if row.get("tables"):
            facts.append(row["tables"].replace(",", ", "))
        r1 = _percent(row.get("best_recall_at_1"))
        facts.append(f"best R@1 {r1}" if r1 else "not finished")
        spec = grid.runs.get(rid)
        config = (yaml.safe_dump(spec.config.model_dump(mode="json"), sort_keys=False) if spec else
                  "# not a run of the current grid: params/ changed since this report was written")
        out.append(f'<details id="{html.escape(RUN_ANCHOR + rid)}"><summary><code>{html.escape(rid)}</code> '
                   f'<span class="muted">{html.escape(" · ".join(facts))}</span></summary>'
                   f'<pre id="{html.escape(CONFIG_ANCHOR + rid)}">{html.escape(config)}</pre></details>')
    return "\n".join(out)


def _download(results: Path, name: str) -> str:
    path = results / name
    if not path.is_file():
        return f"<code>{html.escape(name)}</code> not written"
    mime = MIME.get(path.suffix, "application/octet-stream")
    return f'<a download="{html.escape(name)}" href="{data_uri(path, mime)}">{html.escape(name)}</a>'


def table_section(grid: Grid, name: str, results: Path, page: Page, reading: str | None, listed: set[str]) -> str:
    """The table's own Markdown in full (its figure embedded), REPORT.md's reading of it, its CSV and LaTeX as
    downloads, and its runs, each a link to its config in the runs section (`listed`: the runs shown there)."""
    definition = grid.tables[name].definition
    files = layout.table_files(grid.profile.name, name, definition.kind)
    md = results / files["md"].name
    out = [f'<section id="{html.escape(name)}">']
    if md.is_file():
        out.append(page.render(md.read_text(), shift=1))
    else:
        out += [f"<h3>{html.escape(definition.title)}</h3>",
                f'<p class="muted">Not aggregated yet: <code>{html.escape(md.name)}</code> is missing.</p>']
    if reading:
        out += ["<h4>Reading</h4>", page.render(reading)]
    downloads = [_download(results, f.name) for key, f in files.items() if key in ("csv", "tex")
                 and (results / f.name).is_file()]
    runs = list(dict.fromkeys(rid for cell in grid.tables[name].cells for rid in cell.run_ids))
    links = " ".join(f'<a href="#{html.escape(CONFIG_ANCHOR + r)}">{html.escape(r)}</a>' if r in listed
                     else f"<code>{html.escape(r)}</code> (not in runs.csv)" for r in runs)
    out.append(f"<p>{' · '.join(downloads + [f'{len(runs)} runs'])}</p>"
               f"<details><summary>The {len(runs)} runs behind {html.escape(name)}</summary><p>{links}</p></details>")
    return "\n".join(out + ["</section>"])


def build_page(grid: Grid, results: Path | None = None) -> str:
    """The page's HTML from the results folder (default results/<profile>/) and the grid."""
    results = results if results is not None else layout.results_dir(grid.profile.name)
    page = Page(results, set(grid.tables))
    listed = {row["run"] for row in _runs(grid, results)}
    report = results / layout.report_file(grid.profile.name).name
    sections = split_sections(report.read_text()) if report.is_file() else [
        ("", f"# Reproduction report — profile `{grid.profile.name}`\n\nREPORT.md is not written yet.")]
    title = f"Reproduction report — profile {grid.profile.name}"
    toc: list[tuple[str, str, list[tuple[str, str]]]] = []  # (anchor, title, its tables)
    body: list[str] = []
    for heading, text in sections:
        if not heading:
            body.append(page.render(text))
            continue
        if heading == "Tables":  # REPORT.md's readings; here each table and figure in full beside its reading
            found = readings(text)
            toc.append(("tables", "Tables and figures", [(n, grid.tables[n].definition.title) for n in grid.tables]))
            body.append('<h2 id="tables">Tables and figures</h2>')
            for name in grid.tables:
                body.append(table_section(grid, name, results, page, found.get(name), listed))
            continue
        anchor = _slug(heading)
        toc.append((anchor, heading, []))
        body.append(f'<h2 id="{html.escape(anchor)}">{page.inline(heading)}</h2>')
        body.append(page.render(text))
    toc.append(("runs", "Runs and their configs", []))
    body += ['<h2 id="runs">Runs and their configs</h2>', runs_section(grid, results)]
    def item(anchor: str, text: str) -> str:
        return f'<a href="#{html.escape(anchor)}">{page.inline(text)}</a>'

    nav = "<nav><ul>" + "".join(
        f"<li>{item(a, t)}" + ("<ul>" + "".join(f"<li>{item(*s)}</li>" for s in sub) + "</ul>" if sub else "") + "</li>"
        for a, t, sub in toc) + "</ul></nav>"
    if body:  # after the opening (title and what the profile is), before the verdicts
        body.insert(1, nav)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head><body>",
        *body,
        f'<p class="muted">Written by <code>python -m pipeline report --profile {html.escape(grid.profile.name)}</code> '
        "from the files beside it; self-contained (no network, no script).</p>",
        "</body></html>", ""])


def write_page(grid: Grid, results: Path | None = None) -> Path:
    from mdr.io import atomic_write_text

    results = results if results is not None else layout.results_dir(grid.profile.name)
    path = results / layout.page_file(grid.profile.name).name
    atomic_write_text(path, build_page(grid, results))
    return path
