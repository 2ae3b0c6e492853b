"""The comparison page: groups over seeds, attainment surfaces, hypervolume spread and tests.

``write_comparison`` finds the runs (run folders, sweep folders, globs), computes
the records (:func:`~search.report._compare.compare_runs`), writes them as
``<out>.json`` beside the page, then draws the page from them. The page is one
self-contained HTML file (plotly.js inlined once, nothing fetched).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from search.report._compare import Comparison, compare_runs
from search.report._compare_figures import (
    attainment_figure,
    fronts_figure,
    hypervolume_box_figure,
    hypervolume_curve_figure,
)
from search.report._figures import label, scale_text
from search.report._groups import IGNORED
from search.report._html import FigureEmbedder, page, table_html
from search.report._runs import ReportError, find_runs

__all__ = ["render_comparison", "write_comparison"]


def _groups_table(c: Comparison) -> pd.DataFrame:
    return pd.DataFrame([{
        "group": g.label, "runs": g.hypervolume.n,
        "seeds": ", ".join("?" if s is None else str(s) for s in g.seeds),
        "hypervolume median": g.hypervolume.median, "q25": g.hypervolume.q25,
        "q75": g.hypervolume.q75, "IQR": g.hypervolume.iqr, "min": g.hypervolume.minimum,
        "max": g.hypervolume.maximum} for g in c.groups])


def _tests_table(c: Comparison) -> pd.DataFrame:
    return pd.DataFrame([{
        "group A": c.groups[t.a].label, "group B": c.groups[t.b].label, "n A": t.n_a,
        "n B": t.n_b, "test": t.test, "U (of A)": t.statistic, "p": t.p_value,
        "A12 = P(HV of A > HV of B)": t.a12} for t in c.tests])


def _runs_table(c: Comparison) -> pd.DataFrame:
    rows = []
    for r in c.runs:
        row: dict[str, object] = {
            "run": r.label, "seed": r.seed,
            "evaluations": r.evaluations, "feasible": r.feasible, "hypervolume": r.hypervolume,
            "chosen trial": None if r.chosen is None else r.chosen.trial,
            "chosen accuracy (val)": None if r.chosen is None else r.chosen.accuracy,
            "chosen accuracy (test)": None if r.chosen is None else r.chosen.test_accuracy,
            "chosen accuracy guarantee": None if r.chosen is None else r.chosen.guarantee}
        for j, o in enumerate(c.objectives):
            if o != "error":
                row[f"chosen {label(o)}"] = None if r.chosen is None else r.chosen.values[j]
        row["folder"] = r.folder
        rows.append(row)
    return pd.DataFrame(rows)


def _diff_html(c: Comparison) -> str:
    d = c.diff
    if not d.keys:
        return "<p>The runs' composed configs are identical.</p>"
    columns = [f"{k} (ignored)" if ign else k for k, ign in zip(d.keys, d.ignored, strict=True)]
    frame = pd.DataFrame([[r.label, *v] for r, v in zip(c.runs, d.values, strict=True)],
                         columns=["run", *columns])
    return (f"<details><summary>Full config diff: {len(d.keys)} key(s) differ between the runs "
            f"(click to show)</summary><p class=\"note\">Keys marked (ignored) do not separate "
            f"groups: {html.escape(', '.join(IGNORED))} and keys below them.</p>"
            f"{table_html(frame, table_id='eenn-compare-diff')}</details>")


def _notes_html(c: Comparison) -> str:
    if not c.notes:
        return ""
    items = "".join(f"<li>{html.escape(n)}</li>" for n in c.notes)
    return (f'<div class="warning" id="eenn-compare-notes"><b>Read with care:</b>'
            f"<ul>{items}</ul></div>")


def _figures_html(c: Comparison, embed: FigureEmbedder) -> list[str]:
    if c.scale is None:  # nothing feasible: the notes say so; draw the hypervolumes only
        return ["<h2>Attainment surfaces and fronts</h2>",
                '<p class="warning">Not drawn: no run has a feasible point.</p>']
    return [
        "<h2>Attainment surfaces over seeds</h2>",
        '<p class="note">Empirical attainment function of each group\'s feasible fronts '
        "(moocore.eaf): the median line bounds the goals reached by at least half of the "
        "group's runs, the band those reached by at least 25% but not by 75% of them (with n "
        "runs, p% means at least ceil(p n / 100) runs; a run without a feasible point reaches "
        "nothing). With three or more objectives, one panel per pair of objectives "
        "(the runs' fronts projected onto it).</p>",
        embed(attainment_figure(c), div_id="eenn-compare-eaf"),
        "<h2>Each run's front and chosen point</h2>",
        f'<p class="note">Chosen point: {html.escape(c.chosen_rule)}.</p>',
        embed(fronts_figure(c), div_id="eenn-compare-fronts"),
    ]


def render_comparison(c: Comparison) -> str:
    """The comparison page of computed records, as an HTML string."""
    embed = FigureEmbedder()
    figures = _figures_html(c, embed)
    body = [
        f"<p>{len(c.runs)} runs in {len(c.groups)} group(s) of runs that differ only in the "
        f"seed. Shared objectives (minimised): {html.escape(', '.join(c.objectives))}; primary "
        f"cost: {html.escape(c.cost)}.</p>",
        _notes_html(c),
        "<h2>Groups</h2>",
        table_html(_groups_table(c), table_id="eenn-compare-groups"),
        "<h2>Runs and what differs between them</h2>",
        '<p class="note">Labels name the config keys that differ (a config group by its name, '
        "e.g. platform=mcu_fog; other keys by their path); the full diff is below.</p>",
        table_html(_runs_table(c), table_id="eenn-compare-runs"),
        _diff_html(c),
        *figures[:3],
        "<h2>Hypervolume over seeds</h2>",
        embed(hypervolume_box_figure(c), div_id="eenn-compare-hv"),
        '<p class="note">pymoo.indicators.hv.HV of each run\'s feasible main-strategy points on '
        "the shared objectives, as defined in search/rundir.py, on one scale for all compared "
        "runs: ideal and nadir over the feasible trials of every strategy of every run, "
        f"reference 1.1 in every scaled objective. Scale: {html.escape(scale_text(c.scale))}. "
        "Quartiles: linear interpolation (numpy). Test: two-sided Mann-Whitney U (scipy) "
        "between every two groups, runs of different configurations being independent "
        "samples; A12 is Vargha and Delaney's effect size U / (n_A n_B). p-values are not "
        "corrected for multiple comparisons.</p>",
        table_html(_tests_table(c), table_id="eenn-compare-tests") if c.tests
        else "<p>One group: no test between groups.</p>",
        embed(hypervolume_curve_figure(c), div_id="eenn-compare-hv-curve"),
        *figures[3:],
    ]
    return page(title=f"EENN search comparison: {len(c.runs)} runs, {len(c.groups)} groups",
                body="\n".join(body))


def write_comparison(paths: Sequence[str | Path], *, out: Path) -> Path:
    """Compare the runs that ``paths`` name (run folders, sweep folders, globs); return ``out``.

    Writes the records to ``out`` with suffix ``.json`` and the page to ``out``.
    """
    out = Path(out)
    if out.suffix == ".json":
        raise ReportError(f"--out {out} would be overwritten by the records (<out>.json); "
                          "name the page .html")
    found = find_runs(paths)
    comparison = compare_runs(found.runs, skipped=found.skipped)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(comparison.to_json(), encoding="utf-8")
    out.write_text(render_comparison(comparison), encoding="utf-8")
    return out
