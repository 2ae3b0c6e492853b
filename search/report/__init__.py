"""Interactive reports of search runs: ``report.html`` per run and a comparison of several runs.

``write_report(run_dir)`` is called at the end of every ``python -m search`` run;
``python -m search.report PATH [PATH ...] [--out FILE]`` writes either a run's
report (one run folder) or a page comparing the runs that the paths name (run
folders, sweep folders, globs), with its records as JSON beside it.

Names are imported when first used: a search run needs only ``write_report``, and the
comparison's statistics (scipy) cost half a second to import.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Comparison", "ReportError", "compare_runs", "find_runs", "write_comparison",
           "write_report"]

_HOME = {"Comparison": "_compare", "compare_runs": "_compare",
         "write_comparison": "_compare_page", "write_report": "_page",
         "ReportError": "_runs", "find_runs": "_runs"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'search.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f"search.report.{_HOME[name]}"), name)
