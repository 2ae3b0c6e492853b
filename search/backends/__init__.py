"""Search backends behind one ask/tell contract: pymoo NSGA-II, Optuna samplers, random."""

from __future__ import annotations

from search.backends._base import Backend, History
from search.backends._factory import make_backend
from search.settings import BACKENDS

__all__ = ["BACKENDS", "Backend", "History", "make_backend"]
