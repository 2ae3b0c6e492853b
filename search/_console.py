"""The terminal console every command prints its tables to."""

from __future__ import annotations

import sys

from rich.console import Console


def terminal_console() -> Console:
    """rich's console; 160 columns when stdout is redirected (a pipe or file would get 80,
    which folds the wide tables of a run, an evaluation or a profile into ellipses)."""
    return Console() if sys.stdout.isatty() else Console(width=160)
