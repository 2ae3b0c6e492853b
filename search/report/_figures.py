"""Records -> plotly figures of fronts and progress. Every number comes from a record."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from search.report._details import OBJECTIVE_LABELS
from search.report._records import (
    HypervolumeInfo,
    ParetoFrontInfo,
    StrategyPoints,
)
from search.rundir import HypervolumeScale

__all__ = [
    "HV_AXIS",
    "hypervolume_figure",
    "matrix_figure",
    "pareto_figure",
    "scale_text",
    "three_d_figure",
]

#: The hypervolume axis title (definition: search.rundir's module docstring).
HV_AXIS = "hypervolume (objectives scaled to [0, 1], reference 1.1)"

STRATEGY_COLOURS = qualitative.D3
DEVICE_COLOURS = qualitative.Set2
LAYOUT = {"template": "plotly_white", "margin": {"l": 70, "r": 30, "t": 50, "b": 60}}


def label(objective: str) -> str:
    return OBJECTIVE_LABELS.get(objective, objective)


def scale_text(scale: HypervolumeScale | None) -> str:
    """The scale in raw units: ideal, nadir and reference point per objective."""
    if scale is None:
        return "no feasible point, so no scale: every hypervolume is 0"
    rows = zip(scale.objectives, scale.ideal, scale.nadir, scale.reference, strict=True)
    return "; ".join(
        f"{o}: ideal {i:.6g}, nadir {n:.6g}, reference {r:.6g}" for o, i, n, r in rows
    )


def fmt_bytes(n_bytes: float | None) -> str:
    if n_bytes is None:
        return "? bytes (input size not in summary.json)"
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes:.0f} B"


def _staircase(points: StrategyPoints) -> tuple[np.ndarray, np.ndarray]:
    idx = np.flatnonzero(points.front_2d)
    order = idx[np.argsort(points.cost[idx], kind="stable")]
    return points.cost[order], points.accuracy[order]


def _strategy_traces(points: StrategyPoints, colour: str, *, main: bool) -> list[go.Scatter]:
    """Faded evaluated points (feasible o, infeasible x), then the front markers and staircase."""
    traces = []
    for ok, symbol, text in ((True, "circle", "feasible"), (False, "x", "infeasible")):
        sel = points.feasible == ok
        traces.append(
            go.Scatter(
                x=points.cost[sel],
                y=points.accuracy[sel],
                mode="markers",
                opacity=0.3,
                marker={"color": colour, "symbol": symbol, "size": 6},
                name=f"{points.strategy}: all evaluated ({text})",
                legendgroup=points.strategy,
                customdata=points.trial[sel],
                hovertext=np.asarray(points.hover)[sel],
                hoverinfo="text",
            )
        )
    front = points.front
    x, y = _staircase(points)
    traces.append(
        go.Scatter(
            x=x,
            y=y,
            mode="lines",
            line={"color": colour, "shape": "hv", "dash": "solid" if main else "dash"},
            name=f"{points.strategy}: front (accuracy vs cost)",
            legendgroup=points.strategy,
            hoverinfo="skip",
        )
    )
    traces.append(
        go.Scatter(
            x=points.cost[front],
            y=points.accuracy[front],
            mode="markers",
            marker={
                "color": colour,
                "size": 10 if main else 8,
                "symbol": "circle" if main else "diamond",
                "line": {"color": "white", "width": 1},
            },
            name=f"{points.strategy}: Pareto points",
            legendgroup=points.strategy,
            customdata=points.trial[front],
            hovertext=np.asarray(points.hover)[front],
            hoverinfo="text",
        )
    )
    return traces


def _chosen_trace(info: ParetoFrontInfo) -> list[go.Scatter]:
    main = info.strategies[0] if info.strategies else None
    if main is None or info.chosen_trial is None or info.chosen_trial not in main.trial:
        return []
    i = int(np.flatnonzero(main.trial == info.chosen_trial)[0])
    return [
        go.Scatter(
            x=[main.cost[i]],
            y=[main.accuracy[i]],
            mode="markers",
            name=f"chosen (trial {info.chosen_trial})",
            marker={"symbol": "circle-open", "size": 20, "color": "crimson", "line": {"width": 3}},
            customdata=[info.chosen_trial],
            hovertext=[main.hover[i]],
            hoverinfo="text",
        )
    ]


def _backbone_traces(info: ParetoFrontInfo) -> list[go.Scatter]:
    """One star per distinct (cost, accuracy) of the backbone-alone references."""
    merged: dict[tuple[float, float], list[str]] = {}
    for ref in info.backbone:
        merged.setdefault((ref.values.get(info.cost, float("nan")), ref.accuracy), []).append(
            ref.label
        )
    return [
        go.Scatter(
            x=[x],
            y=[y],
            mode="markers",  # named in the legend and on hover: a text label hid the front
            marker={"symbol": "star", "size": 14, "color": "black"},
            name=" / ".join(names),
            hovertext=[f"{' / '.join(names)}<br>accuracy {y:.4f}<br>{label(info.cost)}: {x:.4g}"],
            hoverinfo="text",
        )
        for (x, y), names in merged.items()
    ]


def pareto_figure(info: ParetoFrontInfo) -> go.Figure:
    """Accuracy vs the primary cost: every strategy, its front, the backbone, the chosen point."""
    fig = go.Figure()
    for k, points in enumerate(info.strategies):
        fig.add_traces(_strategy_traces(points, STRATEGY_COLOURS[k % 10], main=k == 0))
    fig.add_traces(_backbone_traces(info))
    fig.add_traces(_chosen_trace(info))
    costs = np.concatenate([p.cost for p in info.strategies])
    positive = costs[costs > 0]
    log = len(positive) > 0 and positive.max() / positive.min() > 50
    fig.update_layout(
        **LAYOUT,
        height=560,
        title="Pareto front: accuracy vs " + label(info.cost) + " (click a point)",
        xaxis={"title": label(info.cost), "type": "log" if log else "linear"},
        yaxis={"title": "accuracy (val)", **_feasible_range(info)},
        legend={"groupclick": "toggleitem"},
    )
    return fig


def _feasible_range(info: ParetoFrontInfo) -> dict[str, Any]:
    """Open the accuracy axis on the feasible points and the backbone (double-click: all)."""
    acc = np.concatenate([p.accuracy[p.feasible] for p in info.strategies] +
                         [np.array([r.accuracy for r in info.backbone])])
    if not len(acc):
        return {}
    lo, hi = float(acc.min()), float(acc.max())
    pad = max(0.1 * (hi - lo), 0.002)
    return {"range": [lo - pad, hi + pad]}


def _costs(info: ParetoFrontInfo) -> list[str]:
    return [o for o in info.objectives if o != "error"]


def _dims(info: ParetoFrontInfo, points: StrategyPoints) -> dict[str, np.ndarray]:
    dims = {"accuracy (val)": points.accuracy}
    for j, o in enumerate(info.objectives):
        if o != "error":
            dims[label(o)] = points.values[:, j]
    return dims


def three_d_figure(info: ParetoFrontInfo) -> go.Figure:
    """3-D view: the first two costs and accuracy; faded feasible points, fronts highlighted."""
    fig = go.Figure()
    names = [label(o) for o in _costs(info)[:2]]
    for k, points in enumerate(info.strategies):
        d = _dims(info, points)
        for sel, opacity, size, suffix in (
            (points.feasible, 0.25, 3, "feasible"),
            (points.front, 1.0, 5, "front"),
        ):
            fig.add_trace(
                go.Scatter3d(
                    x=d[names[0]][sel],
                    y=d[names[1]][sel],
                    z=points.accuracy[sel],
                    mode="markers",
                    marker={"size": size, "color": STRATEGY_COLOURS[k % 10], "opacity": opacity},
                    name=f"{points.strategy}: {suffix}",
                    hovertext=np.asarray(points.hover)[sel],
                    hoverinfo="text",
                )
            )
    fig.update_layout(
        **LAYOUT,
        height=600,
        title="3-D view of the first two costs and accuracy",
        scene={
            "xaxis_title": names[0],
            "yaxis_title": names[1],
            "zaxis_title": "accuracy",
            "aspectmode": "cube",
            "camera": {"eye": {"x": 1.6, "y": 1.6, "z": 0.9}},
        },
    )
    return fig


def matrix_figure(info: ParetoFrontInfo) -> go.Figure:
    """Scatter matrix (lower triangle, SVG) of accuracy and every cost objective."""
    keys = list(_dims(info, info.strategies[0]))
    n = len(keys) - 1
    fig = make_subplots(
        rows=n,
        cols=n,
        shared_xaxes="columns",
        shared_yaxes="rows",
        horizontal_spacing=0.03,
        vertical_spacing=0.03,
    )
    for k, points in enumerate(info.strategies):
        d = _dims(info, points)
        for r in range(1, n + 1):
            for c in range(r):
                for sel, opacity, suffix in (
                    (points.feasible & ~points.front, 0.25, "feasible"),
                    (points.front, 1.0, "front"),
                ):
                    fig.add_trace(
                        go.Scatter(
                            x=d[keys[c]][sel],
                            y=d[keys[r]][sel],
                            mode="markers",
                            opacity=opacity,
                            marker={"size": 5, "color": STRATEGY_COLOURS[k % 10]},
                            legendgroup=f"{k}{suffix}",
                            name=f"{points.strategy}: {suffix}",
                            showlegend=(r, c) == (1, 0),
                            hovertext=np.asarray(points.hover)[sel],
                            hoverinfo="text",
                        ),
                        row=r,
                        col=c + 1,
                    )
    for i in range(n):
        fig.update_xaxes(title_text=keys[i], row=n, col=i + 1)
        fig.update_yaxes(title_text=keys[i + 1], row=i + 1, col=1)
    fig.update_layout(
        **LAYOUT, height=260 * n + 100, title="Scatter matrix of all objectives (feasible points)"
    )
    return fig


def hypervolume_figure(info: HypervolumeInfo) -> go.Figure:
    """Hypervolume of the feasible points so far, per strategy, against evaluations."""
    fig = go.Figure()
    for k, curve in enumerate(info.curves):
        fig.add_trace(
            go.Scatter(
                x=curve.evaluations,
                y=curve.hypervolume,
                mode="lines",
                name=curve.strategy,
                line={"color": STRATEGY_COLOURS[k % 10], "shape": "hv"},
            )
        )
    fig.update_layout(
        **LAYOUT,
        height=420,
        title="Search progress: hypervolume of the feasible points per strategy",
        xaxis={"title": "evaluations of the strategy"},
        yaxis={"title": HV_AXIS},
    )
    return fig
