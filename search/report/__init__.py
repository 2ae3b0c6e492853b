"""Interactive reports of search runs: ``report.html`` per run and a comparison of several runs.

``write_report(run_dir)`` is called at the end of every ``python -m search`` run;
``python -m search.report RUN [RUN ...] [--out FILE]`` writes either a run's
report (one folder) or a page comparing several runs.
"""

from __future__ import annotations

from search.report._compare import ReportError
from search.report._compare_page import write_comparison
from search.report._page import write_report

__all__ = ["ReportError", "write_comparison", "write_report"]
