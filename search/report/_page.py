"""The per-run report: one self-contained ``report.html`` in the run folder.

Sections: Pareto front (plus a 3-D view and a scatter matrix with three or
more objectives), hypervolume progress, the selected point's exit distribution
and device mapping (chosen point first; any front point via the selector, a
click on the front, or a click on a table row), a sortable table of the front
points, and predicted vs measured when ``evaluated.csv`` exists.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from search.report._details import device_mapping, exit_distribution
from search.report._figures import (
    hypervolume_figure,
    matrix_figure,
    pareto_figure,
    scale_text,
    three_d_figure,
)
from search.report._html import FigureEmbedder, page, script_json, table_html
from search.report._point_figures import exit_figure, mapping_figure, predicted_figure
from search.report._records import (
    HypervolumeInfo,
    ParetoFrontInfo,
    get_hypervolume_info,
    get_pareto_front_info,
    get_predicted_measured,
    pareto_table,
)
from search.results import guarantee_text
from search.rundir import REPORT, Run, guarantee_of, load_run

__all__ = ["MAX_SELECTABLE", "selectable_trials", "write_report"]

#: Points whose exit distribution and mapping are precomputed into the page.
MAX_SELECTABLE = 200

_SELECT_SCRIPT = """
const EENN = %s;
function eennSelect(trial) {
  const key = String(trial), desc = document.getElementById('eenn-selected-desc');
  if (!(key in EENN.exit)) {
    desc.innerHTML = 'trial ' + key + ' is not a front point; only front points and the '
      + 'chosen point have precomputed details.';
    return false;
  }
  const visE = Array.from({length: EENN.nExit}, (_, i) => EENN.exit[key].includes(i));
  const visM = Array.from({length: EENN.nMap},
                          (_, i) => i < EENN.nFixedMap || EENN.map[key].includes(i));
  Plotly.update('eenn-exits', {visible: visE},
                {'title.text': 'Exit distribution (trial ' + key + ')'});
  Plotly.update('eenn-mapping', {visible: visM},
                {'title.text': 'Device mapping (trial ' + key + ')'});
  document.getElementById('eenn-select').value = key;
  desc.innerHTML = EENN.desc[key];
  document.querySelectorAll('#eenn-table tbody tr').forEach(
    tr => tr.classList.toggle('selected', tr.dataset.key === key));
  return true;
}
window.addEventListener('load', () => {
  document.getElementById('eenn-select').addEventListener(
    'change', ev => eennSelect(ev.target.value));
  document.querySelectorAll('#eenn-table tbody tr').forEach(
    tr => tr.addEventListener('click', () => eennSelect(tr.dataset.key)));
  const front = document.getElementById('eenn-pareto');
  if (front && front.on) {
    front.on('plotly_click', ev => {
      const p = ev.points && ev.points[0];
      if (p && p.customdata !== undefined) eennSelect(p.customdata);
    });
  }
  eennSelect(EENN.initial);
});
"""


def selectable_trials(front: ParetoFrontInfo) -> list[int]:
    """The chosen trial, then the main front by cost, then the reference strategies' fronts."""
    out: list[int] = [] if front.chosen_trial is None else [front.chosen_trial]
    for points in front.strategies:
        idx = np.flatnonzero(points.front)
        out += [int(points.trial[i]) for i in idx[np.argsort(points.cost[idx], kind="stable")]]
    if not out and front.strategies:  # nothing feasible: still show the first trial
        out = [int(front.strategies[0].trial[0])]
    return list(dict.fromkeys(out))[:MAX_SELECTABLE]


def _chosen_html(chosen: dict[str, Any]) -> str:
    """chosen.yaml as a val/calibration/test table of its scalar figures, plus any message,
    opened by the accuracy guarantee in one line."""
    splits = {k: v for k, v in chosen.items()
              if k in ("val", "calibration", "test") and isinstance(v, dict)}
    keys = list(
        dict.fromkeys(
            k
            for figs in splits.values()
            for k, v in figs.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        )
    )
    frame = pd.DataFrame(
        {"figure": keys, **{s: [figs.get(k) for k in keys] for s, figs in splits.items()}}
    )
    facts = {k: v for k, v in chosen.items()
             if k not in ("val", "calibration", "test", "config")}
    text = html.escape(yaml.safe_dump(facts, sort_keys=False, default_flow_style=None))
    table = table_html(frame, table_id="eenn-chosen") if keys else ""
    line = html.escape("Accuracy guarantee: " + guarantee_text(guarantee_of({}, chosen)))
    return f"<p><strong>{line}</strong></p><pre>{text}</pre>{table}"


def _infeasible_banner(summary: dict[str, Any]) -> str:
    """The page opens with this when the run found no feasible EENN (summary.json status)."""
    if summary.get("status", "feasible") == "feasible":
        return ""
    broken = "; ".join(f"{k} by {v:.4g}" for k, v in (summary.get("violations") or {}).items())
    relax = "; ".join(summary.get("relax") or [])
    notes = "".join(f"<br>{html.escape(n)}" for n in summary.get("notes") or [])
    head = ("No certified EENN." if summary.get("status") == "not_certified"
            else "No feasible EENN.")
    return ('<div class="note" style="border:2px solid crimson;padding:0.6em">'
            f"<strong>{head}</strong> "
            f"{html.escape(str(summary.get('message') or ''))}"
            + (f"<br>Binding: {html.escape(broken)}" if broken else "")
            + (f"<br>To admit the closest trial, relax: {html.escape(relax)}" if relax else "")
            + f"{notes}</div>")


def _header(run: Run, front: ParetoFrontInfo) -> str:
    counts = ", ".join(
        f"{p.strategy}: {len(p.trial)} evaluated, {int(p.feasible.sum())} feasible, "
        f"{int(p.front.sum())} on the front"
        for p in front.strategies
    )
    chosen = f"<h2>Chosen point</h2>{_chosen_html(run.chosen)}" if run.chosen else ""
    return (
        f"<p>Run folder: <code>{html.escape(str(run.path))}</code><br>"
        f"Objectives (minimised): {html.escape(', '.join(run.objectives))}; main strategy: "
        f"{html.escape(run.strategy)}<br>{html.escape(counts)}</p>{chosen}"
    )


def _details_section(
    run: Run, front: ParetoFrontInfo, embed: FigureEmbedder
) -> tuple[str, dict[str, object]]:
    trials = selectable_trials(front)
    by_trial = run.trials.set_index("trial", drop=False)
    series = [by_trial.loc[t] for t in trials]
    dists = [exit_distribution(run, s) for s in series]
    maps = [device_mapping(run, s) for s in series]
    initial = trials[0]
    hover = {int(t): h for p in front.strategies for t, h in zip(p.trial, p.hover, strict=True)}
    n_fixed = len(maps[0].devices) if maps else 0
    state = {
        "initial": str(initial),
        "exit": {str(t): [2 * i, 2 * i + 1] for i, t in enumerate(trials)},
        "map": {str(t): [n_fixed + 3 * i + k for k in range(3)] for i, t in enumerate(trials)},
        "nExit": 2 * len(trials),
        "nMap": n_fixed + 3 * len(trials),
        "nFixedMap": n_fixed,
        "desc": {str(t): hover.get(t, f"trial {t}") for t in trials},
    }
    options = "".join(
        f'<option value="{t}">trial {t}{" (chosen)" if t == front.chosen_trial else ""}</option>'
        for t in trials
    )
    body = (
        '<h2>Selected point</h2><p class="note">Pick a point here, click one on the Pareto '
        f'front or a row of the table. <select id="eenn-select">{options}</select></p>'
        '<p id="eenn-selected-desc"></p>'
        + embed(exit_figure(dists, initial), div_id="eenn-exits")
        + embed(mapping_figure(maps, initial), div_id="eenn-mapping")
        + '<p class="note">Strip widths are segment MACs (summary.json candidates.segment_macs); '
        "link labels are the bytes sent per sample at the sending device's activation "
        "bit-width.</p>"
    )
    return body, state


def _hv_note(hv: HypervolumeInfo) -> str:
    final = ", ".join(
        f"{c.strategy} {c.hypervolume[-1]:.6g}" for c in hv.curves if len(c.hypervolume)
    )
    return (
        '<p class="note">Hypervolume (pymoo.indicators.hv.HV) of the feasible points evaluated '
        "so far, as defined in search/rundir.py (the values in summary.json): each objective is "
        "scaled to [0, 1] by the ideal and nadir of the run's feasible points (all strategies), "
        f"against the reference 1.1 in every objective. Scale: {html.escape(scale_text(hv.scale))}"
        f". Final: {html.escape(final)}.</p>"
    )


def render_report(run: Run) -> str:
    """The report page of a loaded run, as an HTML string."""
    embed = FigureEmbedder()
    front = get_pareto_front_info(run)
    hv = get_hypervolume_info(run, front)
    parts = [
        _infeasible_banner(run.summary),
        _header(run, front),
        "<h2>Pareto front</h2>",
        embed(pareto_figure(front), div_id="eenn-pareto"),
    ]
    if sum(o != "error" for o in front.objectives) >= 2:
        parts += [
            embed(three_d_figure(front), div_id="eenn-3d"),
            embed(matrix_figure(front), div_id="eenn-matrix"),
        ]
    parts += [
        "<h2>Search progress</h2>",
        embed(hypervolume_figure(hv), div_id="eenn-hv"),
        _hv_note(hv),
    ]
    details, state = _details_section(run, front, embed)
    parts += [
        details,
        '<h2>Pareto points</h2><p class="note">Click a header to sort, a row to select.</p>',
        table_html(pareto_table(run, front), table_id="eenn-table", row_key="trial"),
    ]
    pairs = get_predicted_measured(run)
    if pairs:
        parts += [
            "<h2>Predicted vs measured</h2>",
            embed(predicted_figure(pairs), div_id="eenn-measured"),
        ]
    return page(
        title=f"EENN search report: {run.label}",
        body="\n".join(parts),
        script=_SELECT_SCRIPT % script_json(state),
    )


def write_report(run_dir: Path, *, out: Path | None = None) -> Path:
    """Write ``report.html`` (or ``out``) for the run folder ``run_dir`` and return its path."""
    run = load_run(Path(run_dir))
    target = Path(out) if out is not None else run.path / REPORT
    target.write_text(render_report(run), encoding="utf-8")
    return target
