"""What a choice is worth: cost model, feature cache, heads, predictions and the proxy."""

from __future__ import annotations

from evaluators.costs import BackboneCosts, PathCosts, device_memory, path_costs
from evaluators.eenn import METRICS, EENNConfig, ExitChoice
from evaluators.macs import count_macs
from evaluators.platform import Device, Link, Platform, PlatformError, platform_from_config
from evaluators.predictions import PredictionTable, SplitPredictions

__all__ = [
    "METRICS",
    "BackboneCosts",
    "Device",
    "EENNConfig",
    "ExitChoice",
    "Link",
    "PathCosts",
    "Platform",
    "PlatformError",
    "PredictionTable",
    "SplitPredictions",
    "count_macs",
    "device_memory",
    "path_costs",
    "platform_from_config",
]
