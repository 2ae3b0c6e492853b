"""Records -> plotly figures. No computation beyond layout: every number comes from a record.

Per-point figures (exit distribution, device mapping) hold one group of traces
per selectable point, all hidden but the initial one; the page's selector
restyles ``visible``. :func:`selection_traces` says which traces belong to
which trial.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from search.report._details import DeviceMapping, ExitDistribution
from search.report._load import OBJECTIVE_LABELS
from search.report._records import HypervolumeInfo, ParetoFrontInfo, PredictedMeasured, StrategyPoints

__all__ = [
    "exit_figure",
    "hypervolume_figure",
    "mapping_figure",
    "matrix_figure",
    "pareto_figure",
    "predicted_figure",
    "three_d_figure",
]

STRATEGY_COLOURS = qualitative.D3
DEVICE_COLOURS = qualitative.Set2
_LAYOUT = {"template": "plotly_white", "margin": {"l": 70, "r": 30, "t": 50, "b": 60}}


def label(objective: str) -> str:
    return OBJECTIVE_LABELS.get(objective, objective)


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
        traces.append(go.Scatter(
            x=points.cost[sel], y=points.accuracy[sel], mode="markers", opacity=0.3,
            marker={"color": colour, "symbol": symbol, "size": 6},
            name=f"{points.strategy}: all evaluated ({text})", legendgroup=points.strategy,
            customdata=points.trial[sel], hovertext=np.asarray(points.hover)[sel], hoverinfo="text"))
    front = points.front
    x, y = _staircase(points)
    traces.append(go.Scatter(
        x=x, y=y, mode="lines", line={"color": colour, "shape": "hv", "dash": "solid" if main else "dash"},
        name=f"{points.strategy}: front (accuracy vs cost)", legendgroup=points.strategy, hoverinfo="skip"))
    traces.append(go.Scatter(
        x=points.cost[front], y=points.accuracy[front], mode="markers",
        marker={"color": colour, "size": 10 if main else 8, "symbol": "circle" if main else "diamond",
                "line": {"color": "white", "width": 1}},
        name=f"{points.strategy}: Pareto points", legendgroup=points.strategy,
        customdata=points.trial[front], hovertext=np.asarray(points.hover)[front], hoverinfo="text"))
    return traces


def _chosen_trace(info: ParetoFrontInfo) -> list[go.Scatter]:
    main = info.strategies[0] if info.strategies else None
    if main is None or info.chosen_trial is None or info.chosen_trial not in main.trial:
        return []
    i = int(np.flatnonzero(main.trial == info.chosen_trial)[0])
    return [go.Scatter(
        x=[main.cost[i]], y=[main.accuracy[i]], mode="markers", name=f"chosen (trial {info.chosen_trial})",
        marker={"symbol": "circle-open", "size": 20, "color": "crimson", "line": {"width": 3}},
        customdata=[info.chosen_trial], hovertext=[main.hover[i]], hoverinfo="text")]


def _backbone_traces(info: ParetoFrontInfo) -> list[go.Scatter]:
    """One star per distinct (cost, accuracy) of the backbone-alone references."""
    merged: dict[tuple[float, float], list[str]] = {}
    for ref in info.backbone:
        merged.setdefault((ref.values.get(info.cost, float("nan")), ref.accuracy), []).append(ref.label)
    return [
        go.Scatter(x=[x], y=[y], mode="markers+text", text=[" / ".join(names)], textposition="bottom left",
                   marker={"symbol": "star", "size": 14, "color": "black"}, name=" / ".join(names),
                   hovertext=[f"{' / '.join(names)}<br>accuracy {y:.4f}<br>{label(info.cost)}: {x:.4g}"],
                   hoverinfo="text")
        for (x, y), names in merged.items()
    ]


def pareto_figure(info: ParetoFrontInfo) -> go.Figure:
    """Accuracy against the primary cost: every strategy, its front, the backbone and the chosen point."""
    fig = go.Figure()
    for k, points in enumerate(info.strategies):
        fig.add_traces(_strategy_traces(points, STRATEGY_COLOURS[k % 10], main=k == 0))
    fig.add_traces(_backbone_traces(info))
    fig.add_traces(_chosen_trace(info))
    costs = np.concatenate([p.cost for p in info.strategies])
    positive = costs[costs > 0]
    log = len(positive) > 0 and positive.max() / positive.min() > 50
    fig.update_layout(
        **_LAYOUT, height=560, title="Pareto front: accuracy vs " + label(info.cost) + " (click a point)",
        xaxis={"title": label(info.cost), "type": "log" if log else "linear"},
        yaxis={"title": "accuracy (val)"}, legend={"groupclick": "toggleitem"})
    return fig


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
        for sel, opacity, size, suffix in ((points.feasible, 0.25, 3, "feasible"), (points.front, 1.0, 5, "front")):
            fig.add_trace(go.Scatter3d(
                x=d[names[0]][sel], y=d[names[1]][sel], z=points.accuracy[sel], mode="markers",
                marker={"size": size, "color": STRATEGY_COLOURS[k % 10], "opacity": opacity},
                name=f"{points.strategy}: {suffix}", hovertext=np.asarray(points.hover)[sel], hoverinfo="text"))
    fig.update_layout(**_LAYOUT, height=600, title="3-D view of the first two costs and accuracy",
                      scene={"xaxis_title": names[0], "yaxis_title": names[1], "zaxis_title": "accuracy",
                             "aspectmode": "cube", "camera": {"eye": {"x": 1.6, "y": 1.6, "z": 0.9}}})
    return fig


def matrix_figure(info: ParetoFrontInfo) -> go.Figure:
    """Scatter matrix (lower triangle, SVG) of accuracy and every cost objective."""
    keys = list(_dims(info, info.strategies[0]))
    n = len(keys) - 1
    fig = make_subplots(rows=n, cols=n, shared_xaxes="columns", shared_yaxes="rows",
                        horizontal_spacing=0.03, vertical_spacing=0.03)
    for k, points in enumerate(info.strategies):
        d = _dims(info, points)
        for r in range(1, n + 1):
            for c in range(r):
                for sel, opacity, suffix in ((points.feasible & ~points.front, 0.25, "feasible"),
                                             (points.front, 1.0, "front")):
                    fig.add_trace(go.Scatter(
                        x=d[keys[c]][sel], y=d[keys[r]][sel], mode="markers", opacity=opacity,
                        marker={"size": 5, "color": STRATEGY_COLOURS[k % 10]}, legendgroup=f"{k}{suffix}",
                        name=f"{points.strategy}: {suffix}", showlegend=(r, c) == (1, 0),
                        hovertext=np.asarray(points.hover)[sel], hoverinfo="text"), row=r, col=c + 1)
    for i in range(n):
        fig.update_xaxes(title_text=keys[i], row=n, col=i + 1)
        fig.update_yaxes(title_text=keys[i + 1], row=i + 1, col=1)
    fig.update_layout(**_LAYOUT, height=260 * n + 100, title="Scatter matrix of all objectives (feasible points)")
    return fig


def hypervolume_figure(info: HypervolumeInfo) -> go.Figure:
    """Hypervolume of the feasible points so far, per strategy, against evaluations."""
    fig = go.Figure()
    for k, curve in enumerate(info.curves):
        fig.add_trace(go.Scatter(x=curve.evaluations, y=curve.hypervolume, mode="lines", name=curve.strategy,
                                 line={"color": STRATEGY_COLOURS[k % 10], "shape": "hv"}))
    ref = ", ".join(f"{o}={v:.4g}" for o, v in zip(info.objectives, info.reference, strict=True))
    fig.update_layout(**_LAYOUT, height=420, title=f"Search progress: hypervolume per strategy (r = {ref})",
                      xaxis={"title": "evaluations of the strategy"},
                      yaxis={"title": "hypervolume of objectives / r"})
    return fig


def exit_figure(dists: list[ExitDistribution], initial: int) -> go.Figure:
    """Share of samples leaving at each exit (bars) and accuracy there (markers), per point."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for d in dists:
        show = d.trial == initial
        fig.add_trace(go.Bar(x=list(d.labels), y=d.fractions, name="share of samples", visible=show,
                             marker={"color": "#4c78a8"}, legendgroup="share"), secondary_y=False)
        fig.add_trace(go.Scatter(x=list(d.labels), y=d.accuracy, name="accuracy of those samples",
                                 mode="lines+markers", visible=show, marker={"color": "#e45756", "size": 10},
                                 legendgroup="acc"), secondary_y=True)
    fig.update_layout(**_LAYOUT, height=400, title=f"Exit distribution (trial {initial})",
                      legend={"orientation": "h", "y": -0.25})
    fig.update_yaxes(title_text="share of val samples", range=[0, 1.05], tickformat=".0%", secondary_y=False)
    fig.update_yaxes(title_text="accuracy at exit", range=[0, 1.05], tickformat=".0%", showgrid=False,
                     secondary_y=True)
    return fig


def _mapping_traces(m: DeviceMapping, show: bool) -> list[go.Bar | go.Scatter]:
    seg_text = [f"segment {s.index} (ends at {s.name})<br>{s.macs:,.0f} MACs on {m.devices[s.device]}"
                for s in m.segments]
    bar = go.Bar(
        y=["backbone"] * len(m.segments), x=[s.macs for s in m.segments], base=[s.start for s in m.segments],
        orientation="h", width=0.4, visible=show, showlegend=False, hovertext=seg_text, hoverinfo="text",
        marker={"color": [DEVICE_COLOURS[s.device % 8] for s in m.segments], "line": {"color": "white", "width": 1}})
    exits = go.Scatter(
        x=[e.position for e in m.exits], y=["exits"] * len(m.exits), mode="markers+text", visible=show,
        marker={"symbol": "triangle-down", "size": 14, "color": "black"}, name="exit", showlegend=False,
        text=[e.name for e in m.exits], textposition="top center", cliponaxis=False,
        hovertext=[f"exit at {e.name} on {m.devices[e.device]}<br>head {e.head}, threshold {e.threshold:.3g}"
                   for e in m.exits], hoverinfo="text")
    used = [link for link in m.links if link.used]
    links = go.Scatter(
        x=[link.position for link in used], y=[f"link {link.link}" for link in used], mode="markers+text",
        visible=show, marker={"symbol": "triangle-right", "size": 14, "color": "dimgray"}, showlegend=False,
        text=[f"{link.sender} -> {link.receiver}: {fmt_bytes(link.n_bytes)}" for link in used],
        textposition="middle right", cliponaxis=False,
        hovertext=[f"{link.link} {link.sender} -> {link.receiver}: {link.tensor}, {fmt_bytes(link.n_bytes)}"
                   for link in used], hoverinfo="text")
    return [bar, exits, links]


def mapping_figure(maps: list[DeviceMapping], initial: int) -> go.Figure:
    """The backbone as a strip of segments (width = MACs) coloured by device, exits and link bytes."""
    fig = go.Figure()
    devices = maps[0].devices if maps else ()
    for d, name in enumerate(devices):  # legend only; always visible
        fig.add_trace(go.Bar(x=[0], y=["backbone"], base=[0], orientation="h", name=name,
                             marker={"color": DEVICE_COLOURS[d % 8]}, hoverinfo="skip"))
    for m in maps:
        fig.add_traces(_mapping_traces(m, m.trial == initial))
    link_rows = [f"link {link.link}" for link in (maps[0].links if maps else ())]
    fig.update_layout(
        **_LAYOUT, height=300 + 30 * len(link_rows), barmode="overlay", title=f"Device mapping (trial {initial})",
        xaxis={"title": "cumulative backbone MACs"},
        yaxis={"categoryorder": "array", "categoryarray": [*reversed(link_rows), "backbone", "exits"]},
        legend={"orientation": "h", "y": -0.3, "yanchor": "top", "title": "device"})
    return fig


def predicted_figure(pairs: tuple[PredictedMeasured, ...]) -> go.Figure:
    """Measured against predicted, one panel per measured column, with the y = x diagonal."""
    fig = make_subplots(rows=1, cols=len(pairs), subplot_titles=[p.measured_column for p in pairs])
    for c, p in enumerate(pairs, start=1):
        lo = float(min(p.predicted.min(), p.measured.min()))
        hi = float(max(p.predicted.max(), p.measured.max()))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", showlegend=c == 1, name="measured = predicted",
                                 line={"color": "gray", "dash": "dot"}), row=1, col=c)
        fig.add_trace(go.Scatter(x=p.predicted, y=p.measured, mode="markers", showlegend=False,
                                 marker={"color": STRATEGY_COLOURS[0], "size": 8},
                                 hovertext=[f"trial {t}" for t in p.trial], hoverinfo="text+x+y"), row=1, col=c)
        fig.update_xaxes(title_text=p.predicted_column, row=1, col=c)
    fig.update_layout(**_LAYOUT, height=380, title="Predicted (proxy) vs measured (runtime, evaluated.csv)")
    return fig
