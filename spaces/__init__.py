"""What can be chosen: exit candidates of a backbone and the one early-exit search space."""

from __future__ import annotations

from spaces.candidates import ExitCandidate, cut_points
from spaces.profile import (
    CANDIDATE_OPTIONS,
    BackboneProfile,
    candidate_options,
    find_exit_candidates,
    profile_backbone,
    to_backbone_costs,
)
from spaces.space import EarlyExitSpace, build_space

__all__ = [
    "CANDIDATE_OPTIONS",
    "BackboneProfile",
    "EarlyExitSpace",
    "ExitCandidate",
    "build_space",
    "candidate_options",
    "cut_points",
    "find_exit_candidates",
    "profile_backbone",
    "to_backbone_costs",
]
