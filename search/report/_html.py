"""HTML helpers shared by the run page and the comparison page.

A page is one self-contained file: plotly.js is inlined once (the first figure
uses ``include_plotlyjs=True``, later ones ``False``), styles and the small
table-sort script are inline, nothing is fetched from a network.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go

__all__ = ["FigureEmbedder", "page", "script_json", "table_html"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
p.note { color: #555; font-size: 0.9em; }
.warning { background: #fff4e5; border-left: 4px solid #e8a33d; padding: 6px 12px; }
details summary { cursor: pointer; color: #1f5fa8; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; }
table.eenn { border-collapse: collapse; font-size: 0.85em; width: 100%; }
table.eenn th, table.eenn td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; }
table.eenn th { background: #f0f0f0; cursor: pointer; user-select: none; }
table.eenn th[data-dir="asc"]::after { content: " \\25B2"; }
table.eenn th[data-dir="desc"]::after { content: " \\25BC"; }
table.eenn tr.selected td { background: #fff3c4; }
table.eenn tbody tr:hover td { background: #f3f8ff; }
"""

_SORT_SCRIPT = """
function eennSortTable(th) {
  const table = th.closest('table'), body = table.tBodies[0];
  const col = Array.from(th.parentNode.children).indexOf(th);
  const dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
  table.querySelectorAll('th').forEach(h => delete h.dataset.dir);
  th.dataset.dir = dir;
  const key = tr => tr.children[col].dataset.value ?? tr.children[col].textContent;
  const rows = Array.from(body.rows);
  const numeric = rows.every(tr => key(tr) === '' || !isNaN(parseFloat(key(tr))));
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    const c = numeric ? (parseFloat(x) || 0) - (parseFloat(y) || 0) : x.localeCompare(y);
    return dir === 'asc' ? c : -c;
  });
  rows.forEach(tr => body.appendChild(tr));
}
"""


class FigureEmbedder:
    """Turns figures into ``<div>`` snippets, inlining plotly.js in the first one only."""

    def __init__(self) -> None:
        self._first = True

    def __call__(self, fig: go.Figure, *, div_id: str) -> str:
        snippet = fig.to_html(
            full_html=False,
            include_plotlyjs=self._first,
            div_id=div_id,
            config={"displaylogo": False, "responsive": True},
        )
        self._first = False
        return f'<div class="figure">{snippet}</div>'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        shown = "" if math.isnan(value) else f"{value:.6g}"
        return f'<td data-value="{"" if math.isnan(value) else repr(value)}">{shown}</td>'
    if value is None:
        return '<td data-value=""></td>'
    return f"<td>{html.escape(str(value))}</td>"


def table_html(frame: pd.DataFrame, *, table_id: str, row_key: str | None = None) -> str:
    """A plain sortable table (click a header); rows carry ``data-key`` from ``row_key``."""
    head = "".join(
        f'<th onclick="eennSortTable(this)">{html.escape(str(c))}</th>' for c in frame.columns
    )
    rows = []
    for record in frame.to_dict("records"):
        key = f' data-key="{html.escape(str(record[row_key]))}"' if row_key else ""
        rows.append(f"<tr{key}>" + "".join(_cell(v) for v in record.values()) + "</tr>")
    return (
        f'<table class="eenn" id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def script_json(value: Any) -> str:
    """JSON safe to place inside a ``<script>`` element."""
    return json.dumps(value).replace("</", "<\\/")


def page(*, title: str, body: str, script: str = "") -> str:
    """The whole self-contained HTML document."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n"
        f"<script>{_SORT_SCRIPT}\n{script}</script>\n</body></html>\n"
    )
