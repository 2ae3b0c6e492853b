"""Records -> plotly figures of single points (exit distribution, device mapping) and evaluated.csv.

Per-point figures hold one group of traces per selectable point, all hidden
but the initial one; the page's selector restyles ``visible``. Group ``i``
is traces ``2i, 2i+1`` of the exit figure and ``D + 3i .. D + 3i + 2`` of the
mapping figure, after ``D`` always-visible device legend entries.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from search.report._details import DeviceMapping, ExitDistribution
from search.report._figures import DEVICE_COLOURS, LAYOUT, STRATEGY_COLOURS, fmt_bytes
from search.report._records import PredictedMeasured

__all__ = ["exit_figure", "mapping_figure", "predicted_figure"]


def exit_figure(dists: list[ExitDistribution], initial: int) -> go.Figure:
    """Share of samples leaving at each exit (bars) and accuracy there (markers), per point."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for d in dists:
        show = d.trial == initial
        fig.add_trace(
            go.Bar(
                x=list(d.labels),
                y=d.fractions,
                name="share of samples",
                visible=show,
                marker={"color": "#4c78a8"},
                legendgroup="share",
            ),
            secondary_y=False,
        )
        fig.add_trace(
            go.Scatter(
                x=list(d.labels),
                y=d.accuracy,
                name="accuracy of those samples",
                mode="lines+markers",
                visible=show,
                marker={"color": "#e45756", "size": 10},
                legendgroup="acc",
            ),
            secondary_y=True,
        )
    fig.update_layout(
        **LAYOUT,
        height=400,
        title=f"Exit distribution (trial {initial})",
        legend={"orientation": "h", "y": -0.25},
    )
    fig.update_yaxes(
        title_text="share of val samples", range=[0, 1.05], tickformat=".0%", secondary_y=False
    )
    fig.update_yaxes(
        title_text="accuracy at exit",
        range=[0, 1.05],
        tickformat=".0%",
        showgrid=False,
        secondary_y=True,
    )
    return fig


def _mapping_traces(m: DeviceMapping, show: bool) -> list[go.Bar | go.Scatter]:
    seg_text = [
        f"segment {s.index} (ends at {s.name})<br>{s.macs:,.0f} MACs on {m.devices[s.device]}"
        for s in m.segments
    ]
    bar = go.Bar(
        y=["backbone"] * len(m.segments),
        x=[s.macs for s in m.segments],
        base=[s.start for s in m.segments],
        orientation="h",
        width=0.4,
        visible=show,
        showlegend=False,
        hovertext=seg_text,
        hoverinfo="text",
        marker={
            "color": [DEVICE_COLOURS[s.device % 8] for s in m.segments],
            "line": {"color": "white", "width": 1},
        },
    )
    exits = go.Scatter(
        x=[e.position for e in m.exits],
        y=["exits"] * len(m.exits),
        mode="markers+text",
        visible=show,
        marker={"symbol": "triangle-down", "size": 14, "color": "black"},
        name="exit",
        showlegend=False,
        text=[e.name for e in m.exits],
        textposition="top center",
        cliponaxis=False,
        hovertext=[
            f"exit at {e.name} on {m.devices[e.device]}<br>"
            f"head {e.head}, threshold {e.threshold:.3g}"
            for e in m.exits
        ],
        hoverinfo="text",
    )
    used = [link for link in m.links if link.used]
    links = go.Scatter(
        x=[link.position for link in used],
        y=[f"link {link.link}" for link in used],
        mode="markers+text",
        visible=show,
        marker={"symbol": "triangle-right", "size": 14, "color": "dimgray"},
        showlegend=False,
        text=[f"{link.sender} -> {link.receiver}: {fmt_bytes(link.n_bytes)}" for link in used],
        textposition="middle right",
        cliponaxis=False,
        hovertext=[
            f"{link.link} {link.sender} -> {link.receiver}: "
            f"{link.tensor}, {fmt_bytes(link.n_bytes)}"
            for link in used
        ],
        hoverinfo="text",
    )
    return [bar, exits, links]


def mapping_figure(maps: list[DeviceMapping], initial: int) -> go.Figure:
    """The backbone as a strip of segments (width = MACs) by device, with exits and link bytes."""
    fig = go.Figure()
    devices = maps[0].devices if maps else ()
    for d, name in enumerate(devices):  # legend only; always visible
        fig.add_trace(
            go.Bar(
                x=[0],
                y=["backbone"],
                base=[0],
                orientation="h",
                name=name,
                marker={"color": DEVICE_COLOURS[d % 8]},
                hoverinfo="skip",
            )
        )
    for m in maps:
        fig.add_traces(_mapping_traces(m, m.trial == initial))
    link_rows = [f"link {link.link}" for link in (maps[0].links if maps else ())]
    fig.update_layout(
        **LAYOUT,
        height=300 + 30 * len(link_rows),
        barmode="overlay",
        title=f"Device mapping (trial {initial})",
        xaxis={"title": "cumulative backbone MACs"},
        yaxis={
            "categoryorder": "array",
            "categoryarray": [*reversed(link_rows), "backbone", "exits"],
        },
        legend={"orientation": "h", "y": -0.3, "yanchor": "top", "title": "device"},
    )
    return fig


def predicted_figure(pairs: tuple[PredictedMeasured, ...]) -> go.Figure:
    """Measured against predicted, one panel per measured column, with the y = x diagonal."""
    fig = make_subplots(rows=1, cols=len(pairs), subplot_titles=[p.measured_column for p in pairs])
    for c, p in enumerate(pairs, start=1):
        lo = float(min(p.predicted.min(), p.measured.min()))
        hi = float(max(p.predicted.max(), p.measured.max()))
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[lo, hi],
                mode="lines",
                showlegend=c == 1,
                name="measured = predicted",
                line={"color": "gray", "dash": "dot"},
            ),
            row=1,
            col=c,
        )
        fig.add_trace(
            go.Scatter(
                x=p.predicted,
                y=p.measured,
                mode="markers",
                showlegend=False,
                marker={"color": STRATEGY_COLOURS[0], "size": 8},
                hovertext=[f"trial {t}" for t in p.trial],
                hoverinfo="text+x+y",
            ),
            row=1,
            col=c,
        )
        fig.update_xaxes(title_text=p.predicted_column, row=1, col=c)
    fig.update_layout(
        **LAYOUT, height=380, title="Predicted (proxy) vs measured (runtime, evaluated.csv)"
    )
    return fig
