"""What can be chosen: exit candidates of a backbone and the one early-exit search space."""

from __future__ import annotations

from spaces.candidates import ExitCandidate, cut_points
from spaces.profile import (
    BackboneProfile,
    find_exit_candidates,
    profile_backbone,
    to_backbone_costs,
)
from spaces.space import EarlyExitSpace, build_space

__all__ = [
    "BackboneProfile",
    "EarlyExitSpace",
    "ExitCandidate",
    "build_space",
    "cut_points",
    "find_exit_candidates",
    "profile_backbone",
    "to_backbone_costs",
]
