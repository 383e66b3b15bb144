"""One self-contained HTML page: sections of text, tables and figures, nothing loaded from elsewhere.

Figures are PNGs inside the page (``data:`` URIs), the style sheet is inline, and there is no
script: the file can be mailed, attached to a CI run or opened offline and looks the same.
:func:`external_references` finds anything that would break that (tests and the writers check
it).  Both ``edgequery report`` (one run folder) and ``benchmarks/run_all.py`` (every committed
result) build their pages with :class:`Page`, so they read alike.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d1d1f;
       background: #fafafa; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
p.lead { color: #555; margin-top: 0; }
nav ol { columns: 2; color: #555; }
table { border-collapse: collapse; margin: 10px 0 4px; font-size: 14px; }
th, td { border: 1px solid #d8d8d8; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f1f1f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.baseline td { color: #666; font-style: italic; }
figure { margin: 14px 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .caption { color: #555; font-size: 13px; margin-top: 4px; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; margin: 8px 0; }
.missing { color: #8a6d00; }
code { background: #f3f3f5; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
footer { color: #777; font-size: 12px; margin-top: 40px; }
"""


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def pct_ci(m: dict[str, Any], key: str = "recall@1") -> str:
    """``87.7 % [85.6, 89.7]`` from a metrics dict holding ``key`` and ``key_ci95``."""
    ci = m.get(f"{key}_ci95")
    text = pct(m.get(key))
    return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else text


@dataclass
class Section:
    title: str
    anchor: str
    parts: list[str] = field(default_factory=list)


class Page:
    """Build a page section by section, then :meth:`render` it to one HTML string."""

    def __init__(self, title: str, lead: str = ""):
        self.title, self.lead = title, lead
        self.sections: list[Section] = []
        self.footer = ""

    def section(self, title: str, anchor: str | None = None) -> "Page":
        anchor = re.sub(r"[^A-Za-z0-9_-]+", "-", anchor or title.lower()).strip("-")
        self.sections.append(Section(title, anchor))
        return self

    def _add(self, text: str) -> "Page":
        if not self.sections:
            raise ValueError("start a section first")
        self.sections[-1].parts.append(text)
        return self

    def text(self, text: str, css: str = "") -> "Page":
        """A paragraph of plain text (escaped); ``css`` a class, e.g. ``note`` or ``missing``."""
        cls = f' class="{css}"' if css else ""
        return self._add(f"<p{cls}>{html.escape(text)}</p>")

    def items(self, lines: Iterable[str]) -> "Page":
        return self._add("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "",
              numeric: Sequence[int] = (), row_css: Sequence[str] | None = None, name: str = "") -> "Page":
        """A table; cells are text (escaped), columns in ``numeric`` right-aligned; ``name`` tags it
        (``data-table``) so a test can find it."""
        rows = list(rows)
        css = list(row_css or [""] * len(rows))
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = []
        for row, rc in zip(rows, css):
            cells = "".join(f'<td{" class=num" if i in numeric else ""}>{html.escape(str(c))}</td>'
                            for i, c in enumerate(row))
            body.append(f'<tr{f" class={rc}" if rc else ""}>{cells}</tr>')
        cap = f'<div class="caption">{html.escape(caption)}</div>' if caption else ""
        tag = f' data-table="{html.escape(name)}"' if name else ""
        return self._add(f"<table{tag}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{cap}")

    def figure(self, png: bytes, caption: str, name: str = "", width: int | None = None) -> "Page":
        """A PNG figure inside the page; ``name`` tags it (``data-figure``) so a test can find it."""
        tag = f' data-figure="{html.escape(name)}"' if name else ""
        style = f' style="width:{width}px"' if width else ""
        return self._add(f'<figure{tag}><img src="{png_data_uri(png)}" alt="{html.escape(caption)}"{style}>'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def render(self) -> str:
        toc = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in self.sections)
        body = "".join(f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>{"".join(s.parts)}</section>'
                       for s in self.sections)
        lead = f'<p class="lead">{html.escape(self.lead)}</p>' if self.lead else ""
        foot = f"<footer>{html.escape(self.footer)}</footer>" if self.footer else ""
        out = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}'
               f'</title><meta name="viewport" content="width=device-width, initial-scale=1">'
               f"<style>{STYLE}</style></head><body><main><h1>{html.escape(self.title)}</h1>{lead}"
               f"<nav><ol>{toc}</ol></nav>{body}{foot}</main></body></html>")
        bad = external_references(out)
        if bad:
            raise AssertionError(f"the page would load {bad[:3]} from elsewhere")
        return out

    def write(self, path: str | Path) -> Path:
        """Render the page into ``path`` (atomically: a reader never sees half a page); returns the path."""
        from ..files import atomic_write

        text = self.render()
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return Path(path)


_REFERENCE = re.compile(r"""\b(?:src|href|srcset|data|action|poster)\s*=\s*["']([^"']+)["']"""
                        r"""|url\(\s*["']?([^"')]+)|@import\s+["']([^"']+)""", re.I)
_REFRESH = re.compile(r"""http-equiv\s*=\s*["']?refresh""", re.I)


def external_references(page: str) -> list[str]:
    """Every ``src``/``href``/``srcset``/``data``/``url()``/``@import`` of ``page`` that is neither a ``data:``
    URI nor an anchor in the page, and any meta refresh: what a browser would load from elsewhere."""
    refs = [next(x for x in m if x) for m in _REFERENCE.findall(page)]
    bad = [r for r in refs if not (r.startswith("data:") or r.startswith("#"))]
    return bad + (["<meta http-equiv=refresh>"] if _REFRESH.search(page) else [])
