"""How a report is drawn: a list of simple blocks rendered to one self-contained HTML page or Markdown.

:mod:`daelab.report` decides what the report says and builds it from :class:`Block` objects
(headings, paragraphs, tables, figures, notes, a headline box); this module only turns those blocks
into text. The HTML page embeds its figures as base64 ``data:`` URIs and carries its CSS inline,
so it opens anywhere without a network or the run directory; a tiny script records on load how many
images decoded (``body[data-images-loaded="k/n"]``), which the browser test reads. The Markdown
links the figures by their paths relative to the run directory.
"""
from __future__ import annotations

import base64
import html
import logging
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


@dataclass
class Block:
    """One piece of the report.

    ``kind`` is one of ``section`` (``text`` = title, ``id``), ``h3``, ``p``, ``note`` (a boxed
    remark, e.g. "not run"), ``banner`` (a prominent warning), ``headline`` (``items``: sentences),
    ``table`` (``header``, ``rows``, ``align``: one of ``l``/``r`` per column, ``caption``),
    ``figure`` (``path`` relative to the run directory, ``text`` = caption), ``details`` (a
    collapsed group of ``children`` with ``text`` as its summary), ``columns`` (``children`` side by
    side where the page is wide enough; ``text`` = ``figures`` for equal columns), ``group``
    (``children`` stacked) and ``kv`` (``rows`` of key/value).
    Text may use ``**bold**``.
    """

    kind: str
    text: str = ""
    id: str | None = None
    header: list[str] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)
    align: str = ""
    items: list[str] = field(default_factory=list)
    path: str | None = None
    children: list["Block"] = field(default_factory=list)


def _inline(text: str) -> str:
    """Escape, then turn ``**bold**`` into ``<strong>`` and ```code``` into ``<code>``."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(str(text)))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_FIGURE_BYTES = 32 << 20  # one figure; the study's largest is ~300 kB
MAX_EMBEDDED_BYTES = 256 << 20  # all figures of one page, however many the JSON lists


def figure_file(run_dir: Path, rel) -> tuple[Path | None, str]:
    """The file a figure block names, if it may be embedded: ``(path, "")`` or ``(None, why not)``.

    The path comes from a stage's JSON, which anyone can edit: only a PNG inside the run directory
    (symlinks resolved, so neither ``..`` nor a link leads out of it) is read; nothing else is.
    """
    if not isinstance(rel, str) or not rel or "\0" in rel:
        return None, "not a file name"
    root = run_dir.resolve()
    try:
        path = (root / rel).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name the OS refuses
        return None, "not a readable path"
    if Path(rel).is_absolute() or not path.is_relative_to(root) or path == root:
        return None, "outside the run directory, not embedded"
    if not path.is_file():
        return None, "missing from the run directory"
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(PNG_SIGNATURE))
        size = path.stat().st_size
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    if head != PNG_SIGNATURE or size > MAX_FIGURE_BYTES:
        return None, "not a PNG image of a sensible size, not embedded"
    return path, ""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _refused_figure(rel, why: str) -> str:
    """The note that replaces a figure that is not embedded (logged too, once, as one line)."""
    if not why.startswith("missing"):
        log.warning("report: figure %s %s", _REPR.repr(rel), why)
    return f"Figure {_REPR.repr(rel) if not isinstance(rel, str) else rel[:200]} is {why}."


CSS = """
:root { --ink:#1d2330; --muted:#5b6475; --rule:#dde2ea; --accent:#2454a6; --soft:#f4f6fa;
        --good:#1d7a46; --bad:#b3261e; --warn:#8a5a00; }
* { box-sizing: border-box; }
body { margin:0; background:#fff; color:var(--ink);
       font: 16px/1.55 "Source Serif Pro", Georgia, "Times New Roman", serif; }
main { max-width: 1040px; margin: 0 auto; padding: 40px 32px 80px; }
h1, h2, h3, nav, table, .kv, figcaption, .banner, .headline h2, .meta {
       font-family: -apple-system, "Segoe UI", "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 30px; margin: 0 0 4px; letter-spacing: -0.01em; }
.meta { color: var(--muted); font-size: 14px; margin-bottom: 22px; }
h2 { font-size: 22px; margin: 48px 0 10px; padding-top: 14px; border-top: 2px solid var(--ink); }
h2 .num { color: var(--accent); margin-right: 8px; }
h3 { font-size: 17px; margin: 28px 0 8px; }
p { margin: 8px 0 12px; max-width: 46em; }
nav { font-size: 14px; margin: 0 0 28px; display: flex; flex-wrap: wrap; gap: 6px 18px; }
nav a { color: var(--accent); text-decoration: none; }
.banner { background: #fff4d6; border-left: 6px solid #e0a100; padding: 12px 18px; margin: 0 0 20px;
          font-size: 15px; color: #4a3700; }
.headline { background: var(--soft); border: 1px solid var(--rule); border-radius: 6px; padding: 6px 24px 12px;
            margin: 8px 0 28px; }
.headline h2 { border: 0; margin: 10px 0 4px; padding: 0; font-size: 15px; text-transform: uppercase;
               letter-spacing: 0.06em; color: var(--muted); }
.headline ol { margin: 8px 0; padding-left: 22px; font-size: 17px; }
.headline li { margin: 6px 0; }
.note { border: 1px dashed #b8c0cc; background: #fafbfc; color: var(--muted); padding: 10px 16px; border-radius: 4px;
        font-style: italic; }
table { border-collapse: collapse; font-size: 13.5px; line-height: 1.35; margin: 10px 0 6px;
        font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--rule); vertical-align: top; }
th { text-align: left; border-bottom: 2px solid var(--ink); font-weight: 600; white-space: nowrap; }
td.r, th.r { text-align: right; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfd; }
caption { caption-side: bottom; text-align: left; color: var(--muted); font-size: 12.5px; padding-top: 6px; }
.table-wrap { overflow-x: auto; }
figure { margin: 16px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); border-radius: 3px; display: block; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
details { margin: 10px 0; }
summary { cursor: pointer; color: var(--accent); font-family: -apple-system, "Segoe UI", Arial, sans-serif;
          font-size: 14px; }
.columns { display: flex; flex-wrap: wrap; gap: 8px 40px; align-items: flex-start; }
.columns .col { flex: 0 1 auto; min-width: 0; max-width: 100%; }
.columns .col:last-child { flex: 1 1 280px; }
.columns.figures .col { flex: 1 1 420px; }
code { font-family: "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.86em; background: var(--soft);
       padding: 1px 4px; border-radius: 3px; }
.kv code { background: none; padding: 0; }
.kv { display: grid; grid-template-columns: max-content minmax(0, 1fr); overflow-wrap: anywhere; gap: 2px 18px;
      font-size: 13.5px; margin: 8px 0 14px; }
.kv div:nth-child(odd) { color: var(--muted); }
.kv code, td code { font-size: 12.5px; }
.v-matched { color: var(--good); font-weight: 600; }
.v-beaten { color: var(--good); font-weight: 700; }
.v-not { color: var(--bad); font-weight: 600; }
.v-none { color: var(--muted); }
"""

# After load, count the images that decoded, for the browser test (and a person's console).
SCRIPT = """window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = loaded + "/" + images.length;
});"""

VERDICT_CLASS = {"matched": "v-matched", "beaten": "v-beaten", "not matched": "v-not"}


def _cell(value, align: str) -> str:
    text = _inline(value)
    cls = VERDICT_CLASS.get(str(value))
    if cls:
        text = f'<span class="{cls}">{text}</span>'
    return f'<td class="{align}">{text}</td>' if align == "r" else f"<td>{text}</td>"


def _html_block(block: Block, run_dir: Path, counter: list[int]) -> str:  # counter: see to_html
    kind = block.kind
    if kind == "section":
        counter[0] += 1
        return f'<h2 id="{block.id}"><span class="num">{counter[0]}</span>{_inline(block.text)}</h2>'
    if kind == "h3":
        return f"<h3>{_inline(block.text)}</h3>"
    if kind == "p":
        return f"<p>{_inline(block.text)}</p>"
    if kind == "note":
        return f'<p class="note">{_inline(block.text)}</p>'
    if kind == "banner":
        return f'<div class="banner">{_inline(block.text)}</div>'
    if kind == "headline":
        items = "".join(f"<li>{_inline(item)}</li>" for item in block.items)
        return f'<section class="headline" id="headline"><h2>{_inline(block.text)}</h2><ol>{items}</ol></section>'
    if kind == "table":
        align = block.align or "l" + "r" * (len(block.header) - 1)
        head = "".join(f'<th class="{a}">{_inline(h)}</th>' for h, a in zip(block.header, align))
        body = "".join("<tr>" + "".join(_cell(v, a) for v, a in zip(row, align)) + "</tr>" for row in block.rows)
        caption = f"<caption>{_inline(block.text)}</caption>" if block.text else ""
        return (f'<div class="table-wrap"><table>{caption}<thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>")
    if kind == "figure":
        path, why = figure_file(run_dir, block.path)
        if path is not None and counter[1] + path.stat().st_size > MAX_EMBEDDED_BYTES:
            path, why = None, f"beyond the {MAX_EMBEDDED_BYTES >> 20} MiB of figures one page embeds"
        if path is None:
            return f'<p class="note">{html.escape(_refused_figure(block.path, why))}</p>'
        counter[1] += path.stat().st_size
        return (f'<figure><img src="{_data_uri(path)}" alt="{html.escape(block.text or block.path)}">'
                f"<figcaption>{_inline(block.text)}</figcaption></figure>")
    if kind == "details":
        inner = "".join(_html_block(child, run_dir, counter) for child in block.children)
        return f"<details><summary>{_inline(block.text)}</summary>{inner}</details>"
    if kind == "group":
        return "<div>" + "".join(_html_block(child, run_dir, counter) for child in block.children) + "</div>"
    if kind == "columns":
        inner = "".join(f'<div class="col">{_html_block(child, run_dir, counter)}</div>' for child in block.children)
        return f'<div class="columns {block.text}">{inner}</div>'
    if kind == "kv":
        cells = "".join(f"<div>{_inline(k)}</div><div><code>{html.escape(str(v))}</code></div>" for k, v in block.rows)
        return f'<div class="kv">{cells}</div>'
    raise ValueError(f"unknown block kind {kind!r}")


def to_html(title: str, subtitle: str, blocks: list[Block], run_dir: Path) -> str:
    """One self-contained HTML page: inline CSS, figures as data URIs, a table of contents."""
    sections = [b for b in blocks if b.kind == "section"]
    nav = "".join(f'<a href="#{b.id}">{i}. {_inline(b.text)}</a>' for i, b in enumerate(sections, 1))
    counter = [0, 0]  # sections numbered so far, bytes of figures embedded so far
    body = "\n".join(_html_block(b, run_dir, counter) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
            f'<body><main><h1>{html.escape(title)}</h1><div class="meta">{_inline(subtitle)}</div>'
            f"<nav>{nav}</nav>\n{body}\n</main><script>{SCRIPT}</script></body></html>\n")


def _md(text) -> str:
    """Markdown text with no raw HTML: ``&``, ``<`` and ``>`` escaped outside code spans, one line.

    Markdown passes HTML through, and the text holds values from the stages' JSON; inside a code
    span (balanced backticks) a renderer shows ``<`` as it is, so those are left alone.
    """
    parts = re.split(r"(`[^`\n]*`)", str(text).replace("\r", " ").replace("\n", " "))
    return "".join(part if part.startswith("`") and part.endswith("`") and len(part) > 1
                   else html.escape(part, quote=False) for part in parts)


def _md_code(value) -> str:
    """``value`` as one code span, whatever backticks it holds (the fence is longer than any run of them)."""
    text = str(value).replace("\r", " ").replace("\n", " ")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_cell(value) -> str:
    return _md(value).replace("|", "\\|")


def _md_block(block: Block, run_dir: Path | None) -> list[str]:
    kind = block.kind
    if kind == "section":
        return [f"## {_md(block.text)}", ""]
    if kind == "h3":
        return [f"### {_md(block.text)}", ""]
    if kind in ("p", "note"):
        return [f"_{_md(block.text)}_" if kind == "note" else _md(block.text), ""]
    if kind == "banner":
        return [f"> **{_md(block.text.replace('**', ''))}**", ""]
    if kind == "headline":
        return [f"**{_md(block.text)}**", ""] + [f"{i}. {_md(item)}" for i, item in enumerate(block.items, 1)] + [""]
    if kind == "table":
        align = block.align or "l" + "r" * (len(block.header) - 1)
        lines = ["| " + " | ".join(_md_cell(h) for h in block.header) + " |",
                 "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
        lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in block.rows]
        return lines + (["", f"_{_md(block.text)}_"] if block.text else []) + [""]
    if kind == "figure":
        path, why = figure_file(run_dir, block.path) if run_dir is not None else (block.path, "")
        if path is None:
            return [f"_{_md(_refused_figure(block.path, why))}_", ""]
        link = Path(block.path).as_posix().replace(" ", "%20").replace("(", "%28").replace(")", "%29")
        alt = _md(block.text).replace("[", "\\[").replace("]", "\\]")
        return [f"![{alt}]({link})", "", f"_{_md(block.text)}_" if block.text else "", ""]
    if kind == "details":
        return [f"**{_md(block.text)}**", ""] + [line for child in block.children
                                                 for line in _md_block(child, run_dir)]
    if kind in ("columns", "group"):
        return [line for child in block.children for line in _md_block(child, run_dir)]
    if kind == "kv":
        return [f"- {_md(k)}: {_md_code(v)}" for k, v in block.rows] + [""]
    raise ValueError(f"unknown block kind {kind!r}")


def to_markdown(title: str, subtitle: str, blocks: list[Block], run_dir: Path | None = None) -> str:
    """The same report as Markdown, figures linked relative to the run directory.

    With ``run_dir``, a figure is linked only where :func:`figure_file` would embed it in the HTML.
    """
    lines = [f"# {_md(title)}", "", _md(subtitle), ""]
    for block in blocks:
        lines += _md_block(block, run_dir)
    return "\n".join(lines).rstrip() + "\n"
