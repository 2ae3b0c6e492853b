"""Search backends behind one ask/tell contract: pymoo NSGA-II, Optuna samplers, random."""

from __future__ import annotations

from search.backends._base import BACKENDS, Backend, History, make_backend

__all__ = ["BACKENDS", "Backend", "History", "make_backend"]
