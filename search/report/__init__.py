"""Interactive reports of search runs: ``report.html`` per run and a comparison of several runs.

``write_report(run_dir)`` is called at the end of every ``python -m search`` run;
``python -m search.report PATH [PATH ...] [--out FILE]`` writes either a run's
report (one run folder) or a page comparing the runs that the paths name (run
folders, sweep folders, globs), with its records as JSON beside it.
"""

from __future__ import annotations

from search.report._compare import Comparison, compare_runs
from search.report._compare_page import write_comparison
from search.report._page import write_report
from search.report._runs import ReportError, find_runs

__all__ = ["Comparison", "ReportError", "compare_runs", "find_runs", "write_comparison",
           "write_report"]
