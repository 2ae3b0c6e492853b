"""What can be chosen: exit candidates of a backbone and the one early-exit search space."""

from __future__ import annotations

from spaces.candidates import ExitCandidate

__all__ = ["ExitCandidate"]
