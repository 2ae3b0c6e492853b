"""The comparison page: several runs' fronts, hypervolumes on one reference, best points.

Typical use: the same model on different platforms, backends or seeds. The
runs are compared on the objectives they share (see ``_compare``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from search.report._compare import ComparisonInfo, get_comparison_info
from search.report._figures import HV_AXIS, STRATEGY_COLOURS, label, scale_text
from search.report._html import FigureEmbedder, page, table_html
from search.rundir import load_run

__all__ = ["comparison_figure", "hypervolume_bar_figure", "render_comparison", "write_comparison"]


def comparison_figure(info: ComparisonInfo) -> go.Figure:
    """Each run's feasible points (faded) and front (accuracy vs the shared primary cost)."""
    fig = go.Figure()
    for k, (name, p) in enumerate(zip(info.labels, info.points, strict=True)):
        colour = STRATEGY_COLOURS[k % 10]
        fig.add_trace(
            go.Scatter(
                x=p.cost[p.feasible],
                y=p.accuracy[p.feasible],
                mode="markers",
                opacity=0.25,
                marker={"color": colour, "size": 5},
                name=f"{name}: feasible",
                legendgroup=name,
                hovertext=np.asarray(p.hover)[p.feasible],
                hoverinfo="text",
            )
        )
        idx = np.flatnonzero(p.front_2d)
        idx = idx[np.argsort(p.cost[idx], kind="stable")]
        fig.add_trace(
            go.Scatter(
                x=p.cost[idx],
                y=p.accuracy[idx],
                mode="lines+markers",
                line={"shape": "hv", "color": colour},
                marker={"size": 8, "color": colour},
                name=f"{name}: front",
                legendgroup=name,
                hovertext=np.asarray(p.hover)[idx],
                hoverinfo="text",
            )
        )
        best = info.best[k]
        if best.trial is not None:
            fig.add_trace(
                go.Scatter(
                    x=[best.cost],
                    y=[best.accuracy],
                    mode="markers",
                    showlegend=False,
                    legendgroup=name,
                    marker={
                        "symbol": "circle-open",
                        "size": 18,
                        "color": colour,
                        "line": {"width": 3},
                    },
                    hovertext=[f"{name}: best point, trial {best.trial}"],
                    hoverinfo="text",
                )
            )
    fig.add_hline(
        y=info.min_accuracy,
        line={"dash": "dot", "color": "gray"},
        annotation_text=f"accuracy threshold {info.min_accuracy:.4f}",
    )
    fig.update_layout(
        template="plotly_white",
        height=560,
        title="Fronts of the compared runs",
        xaxis={"title": label(info.cost)},
        yaxis={"title": "accuracy (val)"},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def hypervolume_bar_figure(info: ComparisonInfo) -> go.Figure:
    """Final hypervolume of each run's main strategy on the common scale."""
    fig = go.Figure(
        go.Bar(
            x=list(info.labels),
            y=list(info.hypervolume),
            marker={"color": [STRATEGY_COLOURS[k % 10] for k in range(len(info.labels))]},
            text=[f"{v:.4f}" for v in info.hypervolume],
            textposition="outside",
        )
    )
    fig.update_layout(
        template="plotly_white",
        height=420,
        title="Hypervolume of each run's main strategy, one scale for all runs",
        yaxis={"title": HV_AXIS},
    )
    return fig


def _best_table(info: ComparisonInfo) -> pd.DataFrame:
    cost = label(info.cost)
    rows = []
    for b in info.best:
        saving = None
        if b.cost is not None and b.backbone_cost:
            saving = round(1.0 - b.cost / b.backbone_cost, 6)
        rows.append(
            {
                "run": b.label,
                "trial": b.trial,
                "accuracy (val)": b.accuracy,
                cost: b.cost,
                "backbone accuracy (val)": b.backbone_accuracy,
                f"backbone {cost}": b.backbone_cost,
                "saving vs backbone": saving,
            }
        )
    return pd.DataFrame(rows)


def render_comparison(info: ComparisonInfo, *, folders: Sequence[Path]) -> str:
    """The comparison page of computed records, as an HTML string."""
    embed = FigureEmbedder()
    listing = "".join(f"<li><code>{html.escape(str(f))}</code></li>" for f in folders)
    hv_rows = pd.DataFrame({"run": list(info.labels), "hypervolume": list(info.hypervolume)})
    body = "\n".join(
        [
            f"<p>Runs:</p><ul>{listing}</ul><p>Shared objectives (minimised): "
            f"{html.escape(', '.join(info.objectives))}; "
            f"primary cost: {html.escape(info.cost)}.</p>",
            "<h2>Fronts</h2>",
            embed(comparison_figure(info), div_id="eenn-compare-fronts"),
            "<h2>Hypervolume</h2>",
            embed(hypervolume_bar_figure(info), div_id="eenn-compare-hv"),
            '<p class="note">pymoo.indicators.hv.HV of each run\'s feasible main-strategy points '
            "on the shared objectives, as defined in search/rundir.py, with one scale for all "
            "runs: ideal and nadir over the feasible points of every strategy of every compared "
            "run, reference 1.1 in every scaled objective. Scale: "
            f"{html.escape(scale_text(info.scale))}.</p>",
            table_html(hv_rows, table_id="eenn-compare-hv-table"),
            "<h2>Best point per run</h2>",
            f'<p class="note">Cheapest feasible point (by {html.escape(info.cost)}) with '
            f"{html.escape(info.accuracy_rule)}; backbone energy/latency are those of the backbone "
            "alone on the last device.</p>",
            table_html(_best_table(info), table_id="eenn-compare-best"),
        ]
    )
    return page(title=f"EENN search comparison: {len(info.labels)} runs", body=body)


def write_comparison(
    run_dirs: Sequence[Path],
    *,
    out: Path,
    max_drop: float = 0.01,
    min_accuracy: float | None = None,
) -> Path:
    """Write one page comparing ``run_dirs`` to ``out`` and return ``out``.

    The accuracy threshold of the best-point table is ``min_accuracy`` when
    given, else min over runs of (backbone val accuracy - ``max_drop``).
    """
    runs = [load_run(Path(d)) for d in run_dirs]
    info = get_comparison_info(runs, max_drop=max_drop, min_accuracy=min_accuracy)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_comparison(info, folders=[r.path for r in runs]), encoding="utf-8")
    return out
