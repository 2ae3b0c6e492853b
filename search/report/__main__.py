"""``python -m search.report PATH [PATH ...] [--out FILE]``.

One run folder: (re)write its ``report.html`` (or ``--out``). Anything else (several
run folders, a sweep folder such as results/multirun/<time>, a glob): one page
comparing every run found (default ``comparison.html`` in the current folder) and its
records as ``comparison.json`` beside it. Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from search.report._compare_page import write_comparison
from search.report._page import write_report
from search.report._runs import is_run_folder
from search.rundir import RunFolderError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m search.report",
        description="Write a run's report.html (one run folder) or a page comparing runs "
        "(several run folders, sweep folders, globs).",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        help="run folders (results/runs/<time>), sweep folders (results/multirun/<time>) or "
        "globs ('results/runs/2026-*'; quote them)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file (default: RUN/report.html for one run, else comparison.html; the "
        "comparison's records go to the same name with .json)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        if len(args.paths) == 1 and is_run_folder(Path(args.paths[0])):
            written = write_report(Path(args.paths[0]), out=args.out)
        else:
            written = write_comparison(args.paths, out=args.out or Path("comparison.html"))
    except RunFolderError as exc:  # ReportError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
