"""``python -m search.report RUN [RUN ...] [--out FILE]``.

One run folder: (re)write its ``report.html`` (or ``--out``). Several: write
one comparison page (default ``comparison.html`` in the current folder).
Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from search.report._compare_page import write_comparison
from search.report._page import write_report
from search.rundir import RunFolderError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m search.report",
        description="Write a run's report.html (one folder) or a page comparing several runs.",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (results/runs/<date_time>)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file (default: RUN/report.html, or comparison.html for several runs)",
    )
    parser.add_argument(
        "--max-drop",
        type=float,
        default=0.01,
        help="comparison: best point needs accuracy >= min backbone accuracy - MAX_DROP",
    )
    parser.add_argument(
        "--min-accuracy",
        type=float,
        default=None,
        help="comparison: fixed accuracy threshold (overrides --max-drop)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        if len(args.runs) == 1:
            written = write_report(args.runs[0], out=args.out)
        else:
            written = write_comparison(
                args.runs,
                out=args.out or Path("comparison.html"),
                max_drop=args.max_drop,
                min_accuracy=args.min_accuracy,
            )
    except RunFolderError as exc:  # ReportError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
