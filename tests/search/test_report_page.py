"""The report pages as files: self-contained, robust to optional inputs, true to the records."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from search.report import ReportError, write_comparison, write_report
from search.report.__main__ import main
from search.report._details import device_mapping, exit_distribution
from search.report._page import selectable_trials
from search.report._point_figures import exit_figure, mapping_figure
from search.report._records import get_hypervolume_info, get_pareto_front_info, pareto_table
from search.rundir import RunFolderError, load_run
from tests.search import _fake_run as fake

PLOTLY_BUNDLE = re.compile(r"plotly\.js v\d+\.\d+\.\d+")


class _Refs(HTMLParser):
    """Collects src/href attributes (script bodies are data: the inlined bundle is not parsed)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [f"{tag} {k}={v}" for k, v in attrs if k in ("src", "href") and v]


def _external_refs(text: str) -> list[str]:
    parser = _Refs()
    parser.feed(text)
    return parser.refs


def _state(text: str) -> dict[str, Any]:
    match = re.search(r"const EENN = (\{.*?\});\n", text)
    assert match, "selection state missing"
    return dict(json.loads(match.group(1)))


def test_report_is_self_contained_and_complete(tmp_path: Path) -> None:
    run_dir = fake.write_fake_run(tmp_path / "run", seed=0)
    out = write_report(run_dir)
    assert out == run_dir / "report.html"
    text = out.read_text()
    assert len(PLOTLY_BUNDLE.findall(text)) == 1  # plotly.js inlined exactly once
    assert _external_refs(text) == []
    for div in (
        "eenn-pareto",
        "eenn-hv",
        "eenn-exits",
        "eenn-mapping",
        "eenn-measured",
        "eenn-table",
    ):
        assert f'id="{div}"' in text
    assert 'id="eenn-3d"' not in text  # two objectives: no 3-D view
    run = load_run(run_dir)
    front = get_pareto_front_info(run)
    table = pareto_table(run, front)
    assert (
        len(re.findall(r'<tr data-key="', text))
        == len(table)
        == sum(int(p.front.sum()) for p in front.strategies)
    )
    state = _state(text)
    trials = selectable_trials(front)
    assert state["initial"] == str(
        json.loads((run_dir / "summary.json").read_text())["chosen_trial"]
    )
    assert list(state["exit"]) == [str(t) for t in trials]
    assert set(table["trial"].astype(str)) <= set(state["exit"])  # every table row is selectable


def test_selection_state_matches_figure_traces(tmp_path: Path) -> None:
    run = load_run(fake.write_fake_run(tmp_path / "run", seed=1))
    front = get_pareto_front_info(run)
    trials = selectable_trials(front)
    rows = [run.trials.set_index("trial", drop=False).loc[t] for t in trials]
    dists = [exit_distribution(run, r) for r in rows]
    maps = [device_mapping(run, r) for r in rows]
    exits, mapping = exit_figure(dists, trials[1]), mapping_figure(maps, trials[1])
    state = _state(write_report(run.path).read_text())
    assert state["nExit"] == len(exits.data) and state["nMap"] == len(mapping.data)
    visible = [i for i, t in enumerate(exits.data) if t.visible]
    assert visible == state["exit"][str(trials[1])]
    shown = [
        i for i, t in enumerate(mapping.data) if t.visible is not False and i >= state["nFixedMap"]
    ]
    assert shown == state["map"][str(trials[1])]
    bars = mapping.data[state["map"][str(trials[1])][0]]
    assert list(bars.x) == [s.macs for s in maps[1].segments]


@pytest.mark.parametrize(
    ("objectives", "strategies", "evaluated", "hypervolume"),
    [
        (("error", "macs"), ("optuna_tpe",), False, False),
        (("error", "energy", "macs"), ("pymoo_nsga2", "random"), True, True),
        (("error", "macs", "energy", "latency"), ("pymoo_nsga2", "manual"), False, True),
        (("macs", "latency"), ("random",), False, False),
    ],
)
def test_report_tolerates_optional_inputs(
    tmp_path: Path,
    objectives: tuple[str, ...],
    strategies: tuple[str, ...],
    evaluated: bool,
    hypervolume: bool,
) -> None:
    run_dir = fake.write_fake_run(
        tmp_path / "run",
        seed=2,
        objectives=objectives,
        strategies=strategies,
        evaluated=evaluated,
        hypervolume=hypervolume,
    )
    (run_dir / "chosen.yaml").unlink()
    text = write_report(run_dir).read_text()
    n_costs = sum(o != "error" for o in objectives)
    assert ('id="eenn-3d"' in text) == (n_costs >= 2) and ('id="eenn-matrix"' in text) == (
        n_costs >= 2
    )
    assert ('id="eenn-measured"' in text) == evaluated
    # the hypervolume note states the run's scale and final values whether or not summary.json
    # holds them (the report computes them with search.rundir either way)
    run = load_run(run_dir)
    hv = get_hypervolume_info(run, get_pareto_front_info(run))
    assert hv.scale is not None
    assert f"{objectives[0]}: ideal {hv.scale.ideal[0]:.6g}" in text
    final = ", ".join(f"{c.strategy} {c.hypervolume[-1]:.6g}" for c in hv.curves)
    assert f"Final: {html.escape(final)}." in text


def test_report_with_nothing_feasible_and_no_chosen_trial(tmp_path: Path) -> None:
    rows = [{"obj_error": 0.3, "obj_macs": 100.0 * (i + 1), "feasible": False} for i in range(3)]
    run_dir = fake.write_custom_run(tmp_path / "bad", rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    del summary["chosen_trial"], summary["input_shape"]
    summary.update(status="no_feasible_eenn", violations={"accuracy_drop": 0.02},
                   relax=["constraints.max_accuracy_drop=0.03"])
    (run_dir / "summary.json").write_text(json.dumps(summary))
    text = write_report(run_dir).read_text()
    assert _state(text)["initial"] == "0" and "0 on the front" in text
    # the page opens with it: before the first section, with what binds and what relaxes it
    banner = text.index("No feasible EENN")
    assert banner < text.index("<h2>")
    assert "accuracy_drop by 0.02" in text and "constraints.max_accuracy_drop=0.03" in text


def test_text_from_the_run_is_escaped(tmp_path: Path) -> None:
    run_dir = fake.write_fake_run(tmp_path / "run", seed=3)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["candidates"][0]["name"] = "conv<1>&</script>"
    summary["platform"]["name"] = "<b>tier&</script>"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    text = write_report(run_dir).read_text()
    assert "conv<1>&</script>" not in text and "<b>tier&</script>" not in text
    assert html.escape("<b>tier&</script>") in text  # in the title and heading


def test_comparison_page_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = fake.write_fake_run(tmp_path / "a", seed=1)
    b = fake.write_fake_run(tmp_path / "b", seed=2, objectives=("error", "macs", "energy"))
    out = write_comparison([a, b], out=tmp_path / "cmp" / "comparison.html")
    text = out.read_text()
    assert len(PLOTLY_BUNDLE.findall(text)) == 1
    assert 'id="eenn-compare-fronts"' in text and 'id="eenn-compare-runs"' in text
    assert (tmp_path / "cmp" / "comparison.json").is_file()
    assert main([str(a), str(b), "--out", str(tmp_path / "c2.html")]) == 0
    assert "each run&#x27;s own chosen point" in (tmp_path / "c2.html").read_text()
    assert main([str(a)]) == 0 and (a / "report.html").is_file()
    capsys.readouterr()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = fake.write_fake_run(tmp_path / "a", seed=1)
    (tmp_path / "notarun").mkdir()
    assert main([str(a), str(tmp_path / "notarun")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "notarun holds no run (no summary.json or trials.parquet in it or below it)" in err
    c = fake.write_fake_run(tmp_path / "c", seed=2, objectives=("error", "energy"))
    assert main([str(a), str(c)]) == 2
    assert "share no cost objective" in capsys.readouterr().err
    with pytest.raises(RunFolderError, match="not a finished run folder"):
        write_report(tmp_path / "notarun")
    with pytest.raises(ReportError, match="share no cost objective"):
        write_comparison([a, c], out=tmp_path / "never.html")


def test_single_device_platform_without_links(tmp_path: Path) -> None:
    exits = {"exits": [{"candidate": 0, "head": 0, "threshold": 0.9}], "boundaries": [],
             "metric": "max_softmax"}
    rows = [
        {"obj_error": 0.1, "obj_macs": 100.0, "feasible": True, "config": json.dumps(exits),
         "exit_fractions": "[0.4, 0.6]", "exit_accuracy": "[0.9, null]"},
        {"obj_error": 0.05, "obj_macs": 300.0, "feasible": True,
         "config": json.dumps({"exits": [], "boundaries": [], "metric": "entropy"})},
    ]  # fmt: skip
    run_dir = fake.write_custom_run(tmp_path / "solo", rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["platform"] = {"name": "solo", "devices": [{"name": "cpu"}], "links": []}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    run = load_run(run_dir)
    mapping = device_mapping(run, run.trials.iloc[0])
    assert mapping.links == () and {s.device for s in mapping.segments} == {0}
    assert _state(write_report(run_dir).read_text())["nFixedMap"] == 1
