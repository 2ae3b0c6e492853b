"""Comparison records -> plotly figures. Every number drawn comes from a :class:`Comparison`.

Error is drawn as accuracy (1 - error, the axis zoomed to the feasible
trials); a cost axis whose feasible range spans more than a decade is
logarithmic. Attainment surfaces are staircases through their corner points,
closed towards the hypervolume reference point of the common scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from search.report._compare import Axis, Comparison
from search.report._figures import HV_AXIS, LAYOUT, STRATEGY_COLOURS, label

__all__ = ["attainment_figure", "fronts_figure", "hypervolume_box_figure",
           "hypervolume_curve_figure", "staircase"]

_BAND_OPACITY = 0.18


def _colour(g: int) -> str:
    return str(STRATEGY_COLOURS[g % len(STRATEGY_COLOURS)])


def _fill(colour: str) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{_BAND_OPACITY})"


def _shown(objective: str, value: float) -> float:
    """Error is drawn as accuracy; costs as they are."""
    return 1.0 - value if objective == "error" else value


def axis_layout(axis: Axis) -> dict[str, object]:
    """Title, type and range of an objective's axis (accuracy for error)."""
    title = "accuracy (val)" if axis.objective == "error" else label(axis.objective)
    out: dict[str, object] = {"title": title, "type": "log" if axis.log else "linear"}
    if axis.low is None or axis.high is None:
        return out
    lo, hi = sorted((_shown(axis.objective, axis.low), _shown(axis.objective, axis.high)))
    if axis.log:
        lo, hi = math.log10(lo), math.log10(hi)
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3 if not axis.log else 0.5)
    out["range"] = [lo - pad, hi + pad]
    return out


def staircase(points: Sequence[tuple[float, float]], reference: tuple[float, float]
              ) -> tuple[list[float], list[float]]:
    """Vertices of the surface through ``points`` (minimised, sorted by x), closed at reference."""
    if not points:
        return [], []
    xs, ys = [points[0][0]], [reference[1]]
    for k, (x, y) in enumerate(points):
        following = points[k + 1][0] if k + 1 < len(points) else reference[0]
        xs += [x, following]
        ys += [y, y]
    return xs, ys


def _axis(c: Comparison, objective: str) -> Axis:
    return next(a for a in c.axes if a.objective == objective)


def _pair_traces(c: Comparison, g: int, p: int, first: bool) -> list[go.Scatter]:
    """A group's 25-75% band and median surface in one objective plane."""
    group, pair = c.groups[g], c.groups[g].attainment[p]
    assert c.scale is not None
    ref = (c.scale.reference[c.objectives.index(pair.x)],
           c.scale.reference[c.objectives.index(pair.y)])
    by_p = {s.percentile: s for s in pair.surfaces}
    best_x, best_y = staircase(by_p[25.0].points, ref)
    worst_x, worst_y = staircase(by_p[75.0].points, ref)
    if not worst_x:
        worst_x, worst_y = [ref[0]], [ref[1]]
    med_x, med_y = staircase(by_p[50.0].points, ref)
    colour, name = _colour(g), group.label
    return [
        go.Scatter(x=best_x + worst_x[::-1], y=[_shown(pair.y, v) for v in best_y + worst_y[::-1]],
                   fill="toself", fillcolor=_fill(colour), line={"width": 0}, mode="lines",
                   name=f"{name}: 25-75% band", legendgroup=name, showlegend=first,
                   hoverinfo="skip"),
        go.Scatter(x=med_x, y=[_shown(pair.y, v) for v in med_y], mode="lines",
                   line={"color": colour, "width": 2.5}, name=f"{name}: median (50%)",
                   legendgroup=name, showlegend=first,
                   hovertemplate=f"{name}: median surface<br>%{{x:.4g}}, %{{y:.4g}}"
                   "<extra></extra>"),
    ]


def attainment_figure(c: Comparison) -> go.Figure:
    """Per objective pair: each group's median attainment surface and its 25-75% band."""
    pairs = c.groups[0].attainment
    cols = min(len(pairs), 3)
    rows = math.ceil(len(pairs) / cols)
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.08, vertical_spacing=0.14,
                        subplot_titles=[f"{label(p.y) if p.y != 'error' else 'accuracy'} vs "
                                        f"{label(p.x)}" for p in pairs] if len(pairs) > 1 else None)
    for p, pair in enumerate(pairs):
        row, col = p // cols + 1, p % cols + 1
        for g in range(len(c.groups)):
            for trace in _pair_traces(c, g, p, first=p == 0):
                fig.add_trace(trace, row=row, col=col)
        fig.update_xaxes(**axis_layout(_axis(c, pair.x)), row=row, col=col)
        fig.update_yaxes(**axis_layout(_axis(c, pair.y)), row=row, col=col)
    fig.update_layout(**LAYOUT)
    fig.update_layout(margin={"t": 100}, height=460 * rows + 50,
                      title="Attainment surfaces over seeds: median (line) and 25-75% (band)",
                      legend={"orientation": "h", "y": -0.12})
    return fig


def hypervolume_box_figure(c: Comparison) -> go.Figure:
    """Each group's hypervolumes over seeds: box (quartiles) with every run as a point."""
    fig = go.Figure()
    for g, group in enumerate(c.groups):
        fig.add_trace(go.Box(
            y=[c.runs[i].hypervolume for i in group.runs], name=group.label,
            boxpoints="all", jitter=0.4, pointpos=0, marker={"color": _colour(g), "size": 8},
            line={"color": _colour(g)}, hovertext=[c.runs[i].label for i in group.runs],
            hoverinfo="text+y"))
    fig.update_layout(**LAYOUT, height=460, showlegend=False, yaxis={"title": HV_AXIS},
                      title="Hypervolume per run, grouped by configuration (one scale)")
    return fig


def hypervolume_curve_figure(c: Comparison) -> go.Figure:
    """Hypervolume against evaluations: per group the median over seeds and its 25-75% band."""
    fig = go.Figure()
    for g, group in enumerate(c.groups):
        b, colour, name = group.curve, _colour(g), group.label
        x = list(b.evaluations)
        fig.add_trace(go.Scatter(
            x=x + x[::-1], y=list(b.q75) + list(b.q25)[::-1], fill="toself",
            fillcolor=_fill(colour), line={"width": 0}, mode="lines", legendgroup=name,
            name=f"{name}: 25-75% band", hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=x, y=list(b.median), mode="lines", line={"color": colour, "width": 2.5},
            legendgroup=name, name=f"{name}: median of {b.runs} runs"))
    fig.update_layout(**LAYOUT, height=460, xaxis={"title": "evaluations (main strategy)"},
                      yaxis={"title": HV_AXIS}, legend={"orientation": "h", "y": -0.2},
                      title="Hypervolume against evaluations, median and 25-75% band over seeds")
    return fig


def fronts_figure(c: Comparison) -> go.Figure:
    """Every run's feasible front (accuracy vs primary cost) and its own chosen point."""
    fig = go.Figure()
    j = c.objectives.index(c.cost)
    for g, group in enumerate(c.groups):
        colour, name = _colour(g), group.label
        for k, i in enumerate(group.runs):
            run = c.runs[i]
            fig.add_trace(go.Scatter(
                x=[x for x, _ in run.front_2d], y=[1.0 - e for _, e in run.front_2d],
                mode="lines+markers", line={"color": colour, "shape": "hv", "width": 1},
                marker={"size": 5, "color": colour}, opacity=0.7, name=name, legendgroup=name,
                showlegend=k == 0, hovertemplate=f"{run.label}<br>%{{x:.4g}}, accuracy "
                f"%{{y:.4f}}<extra></extra>"))
        chosen = [c.runs[i] for i in group.runs if c.runs[i].chosen is not None]
        fig.add_trace(go.Scatter(
            x=[r.chosen.values[j] for r in chosen if r.chosen],
            y=[r.chosen.accuracy for r in chosen if r.chosen], mode="markers",
            marker={"symbol": "circle-open", "size": 16, "color": colour, "line": {"width": 3}},
            name=f"{name}: chosen points", legendgroup=name, showlegend=False,
            hovertext=[f"{r.label}: chosen trial {r.chosen.trial}" for r in chosen if r.chosen],
            hoverinfo="text"))
    error = Axis(objective="error", log=False, low=None, high=None)
    fig.update_layout(**LAYOUT, height=560, legend={"orientation": "h", "y": -0.2},
                      title=f"Each run's front (accuracy vs {label(c.cost)}) and its chosen point",
                      xaxis=axis_layout(_axis(c, c.cost)),
                      yaxis=axis_layout(next((a for a in c.axes if a.objective == "error"),
                                             error)))
    return fig
