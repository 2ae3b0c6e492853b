"""Visible notes of a comparison: what makes it weaker than it looks, in one sentence each.

Nothing on the comparison page is silently empty: a run without a feasible
point, a surface no quorum of runs reaches, runs on different datasets or
objectives, a group of one run, curves cut to the shortest run all get a note.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from search.report._groups import Grouping
from search.rundir import Run

if TYPE_CHECKING:
    from search.report._compare import Comparison

__all__ = ["notes"]


def _dataset_note(grouping: Grouping) -> list[str]:
    diff = grouping.diff
    keys = [k for k, ign in zip(diff.keys, diff.ignored, strict=True)
            if not ign and (k == "data" or k.startswith("data."))]
    if not keys:
        return []
    shown = "; ".join(
        f"{k}: {' / '.join(dict.fromkeys(v[diff.keys.index(k)] for v in diff.values))}"
        for k in keys[:4])
    return [f"Different datasets ({shown}): accuracies come from different validation sets, so "
            "fronts, attainment surfaces and hypervolumes (one scale over all runs) compare "
            "different problems; read them side by side, not as a ranking."]


def _objective_notes(runs: Sequence[Run], c: Comparison) -> list[str]:
    extra = [f"{r.path.name}: {', '.join(o for o in r.objectives if o not in c.objectives)}"
             for r in runs if set(r.objectives) - set(c.objectives)]
    if not extra:
        return []
    return [f"Compared on the shared objectives {', '.join(c.objectives)} only; left out "
            f"({'; '.join(extra)}). Fronts and hypervolumes are those on the shared objectives."]


def _group_notes(c: Comparison) -> list[str]:
    out = []
    for g in c.groups:
        if len(g.runs) == 1:
            out.append(f"{g.label}: one run, so its spread is a single value and a rank test "
                       "has no power; run more seeds.")
        if g.curve.truncated:
            lengths = sorted({c.runs[i].evaluations for i in g.runs})
            out.append(f"{g.label}: runs have {lengths[0]} to {lengths[-1]} evaluations; its "
                       f"hypervolume curve stops at {lengths[0]}.")
        for pair in g.attainment[:1]:
            for s in pair.surfaces:
                if not s.points:
                    out.append(f"{g.label}: fewer than {s.runs_needed} of {s.runs_total} runs "
                               f"have a feasible point, so its {s.percentile:g}% attainment "
                               "surface is empty.")
    return out


def notes(runs: Sequence[Run], c: Comparison, grouping: Grouping) -> tuple[str, ...]:
    """Warnings to show above everything else (empty tuple: nothing to warn about)."""
    out = _dataset_note(grouping) + _objective_notes(runs, c)
    if grouping.no_config:
        names = ", ".join(str(runs[i].path) for i in grouping.no_config)
        out.append(f"No config.yaml (nor .hydra/config.yaml) in {names}: their settings are "
                   "unknown, so they are grouped together and labelled by what is absent.")
    if c.scale is None:
        out.append("No run has a feasible point: every hypervolume is 0 and there are no fronts "
                   "or attainment surfaces to draw; relax the constraints or raise the budget.")
    else:
        empty = [r.label for r in c.runs if r.feasible == 0]
        if empty:
            out.append(f"No feasible point in {', '.join(empty)}: such a run attains nothing "
                       "(the attainment surfaces count it) and its hypervolume is 0.")
    missing = [r.label for r in c.runs if r.chosen is None]
    if missing:
        out.append(f"No chosen point recorded for {', '.join(missing)}.")
    out += _group_notes(c)
    if len(c.groups) == 1:
        out.append("All runs share one configuration (they differ only in the seed or in "
                   "ignored keys): one group, no test between groups.")
    if c.skipped:
        out.append(f"Skipped {len(c.skipped)} unfinished job(s): {'; '.join(c.skipped)}.")
    return tuple(out)
