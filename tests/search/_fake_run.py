"""Test fixture: write a run folder in the exact run-folder schema from seeded synthetic data.

Costs are priced with the real cost model (evaluators.costs.path_costs) on a
synthetic backbone and a three-device platform; accuracies and exit shares are
random but consistent (overall accuracy = sum of share x exit accuracy). The
``pareto`` column is computed here with a plain O(n^2) loop, independently of
search.rundir's pymoo-based fronts, so tests can cross-check the two.
summary.json is written by search.rundir.write_summary (schema version first).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from evaluators.costs import BackboneCosts, path_costs
from evaluators.eenn import EENNConfig, ExitChoice
from evaluators.platform import Device, Link, Platform
from search.rundir import hypervolume_summary, write_summary

CANDIDATES = ("conv1", "pool1", "conv2", "pool2", "conv3")
HEADS = ("linear", "mlp")
BACKBONE_ACCURACY = 0.975
INPUT_SHAPE = (1, 28, 28)


def platform() -> Platform:
    """MCU (int8) -> gateway (fp16) -> server (fp32): assumption, test figures only."""
    return Platform(
        name="three_tier_test",
        devices=(
            Device(
                name="mcu",
                macs_per_second=5e7,
                energy_per_mac_j=4e-12,
                static_power_w=0.01,
                ram_bytes=256_000,
                flash_bytes=1_000_000,
                activation_bits=8,
            ),
            Device(
                name="gateway",
                macs_per_second=5e9,
                energy_per_mac_j=2e-11,
                static_power_w=0.5,
                ram_bytes=1 << 30,
                flash_bytes=1 << 32,
                activation_bits=16,
            ),
            Device(
                name="server",
                macs_per_second=1e12,
                energy_per_mac_j=5e-11,
                static_power_w=30.0,
                ram_bytes=1 << 34,
                flash_bytes=1 << 40,
                activation_bits=32,
            ),
        ),
        links=(
            Link(name="ble", bandwidth_bits_per_s=1e6, latency_s=0.01, energy_per_byte_j=1e-7),
            Link(name="wifi", bandwidth_bits_per_s=1e8, latency_s=0.002, energy_per_byte_j=1e-8),
        ),
    )


def backbone_costs() -> BackboneCosts:
    seg = np.array([40_000, 5_000, 300_000, 4_000, 600_000, 80_000], dtype=np.int64)
    act = np.array([8 * 26 * 26, 8 * 13 * 13, 16 * 11 * 11, 16 * 5 * 5, 32 * 3 * 3], dtype=np.int64)
    return BackboneCosts(
        candidate_names=CANDIDATES,
        segment_macs=seg,
        segment_params=seg // 50,
        segment_peak_elems=np.array([6000, 6000, 3000, 2000, 1000, 300], dtype=np.int64),
        activation_elems=act,
        input_elems=int(np.prod(INPUT_SHAPE)),
        head_macs=np.stack([act * 10, act * 40], axis=1),
        head_params=np.stack([act * 10, act * 40], axis=1),
        head_names=HEADS,
    )


def _random_config(rng: np.random.Generator, n_links: int) -> EENNConfig:
    n_cand = len(CANDIDATES)
    active = sorted(
        rng.choice(n_cand, size=int(rng.choice(4, p=[0.1, 0.3, 0.3, 0.3])), replace=False).tolist()
    )
    exits = tuple(
        ExitChoice(
            candidate=int(c),
            head=int(rng.integers(0, len(HEADS))),
            threshold=round(float(rng.uniform(0.5, 0.99)), 3),
        )
        for c in active
    )
    bounds = tuple(sorted(int(b) for b in rng.integers(0, n_cand + 2, size=n_links)))
    return EENNConfig(exits=exits, boundaries=bounds, metric="max_softmax")


def _config_json(config: EENNConfig) -> str:
    return json.dumps(
        {
            "exits": [
                {"candidate": e.candidate, "head": e.head, "threshold": e.threshold}
                for e in config.exits
            ],
            "boundaries": list(config.boundaries),
            "metric": config.metric,
        }
    )


def _trial_row(rng: np.random.Generator, config: EENNConfig) -> dict[str, Any]:
    paths = path_costs(config, backbone_costs(), platform())
    k = len(config.exits)
    shares = rng.dirichlet(np.ones(k + 1) * 1.5)
    depth = np.array([e.candidate for e in config.exits] + [len(CANDIDATES)], dtype=float)
    exit_acc = np.clip(0.80 + 0.035 * depth + rng.normal(0, 0.01, k + 1), 0, 1)
    exit_acc[-1] = BACKBONE_ACCURACY
    accuracy = float(shares @ exit_acc)
    return {
        "config": _config_json(config),
        "accuracy": accuracy,
        "error": 1.0 - accuracy,
        "macs": float(shares @ paths.macs),
        "energy_j": float(shares @ paths.energy_j),
        "latency_s": float(shares @ paths.latency_s),
        "exit_fractions": json.dumps(shares.tolist()),
        "exit_accuracy": json.dumps(
            [None if s == 0 else float(a) for s, a in zip(shares, exit_acc, strict=True)]
        ),
    }


_OBJ_COLUMN = {"error": "error", "macs": "macs", "energy": "energy_j", "latency": "latency_s"}


def _pareto_loop(values: np.ndarray, feasible: np.ndarray) -> np.ndarray:
    """Non-dominated among feasible rows, by the definition (independent of pymoo)."""
    out = np.zeros(len(values), dtype=bool)
    for i in np.flatnonzero(feasible):
        dominated = any(
            feasible[j] and np.all(values[j] <= values[i]) and np.any(values[j] < values[i])
            for j in range(len(values))
        )
        out[i] = not dominated
    return out


def trials_frame(
    *, seed: int, objectives: Sequence[str], strategies: Sequence[str], n_trials: int
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s_idx, strategy in enumerate(strategies):
        n = n_trials if s_idx == 0 else (max(4, n_trials // 2) if strategy != "manual" else 4)
        for i in range(n):
            row = _trial_row(rng, _random_config(rng, len(platform().links)))
            row.update(strategy=strategy, generation=i // 10)
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame.insert(0, "trial", np.arange(len(frame)))
    for o in objectives:
        frame[f"obj_{o}"] = frame[_OBJ_COLUMN[o]]
    frame["cv_accuracy_drop"] = (BACKBONE_ACCURACY - 0.03) - frame["accuracy"]
    frame["feasible"] = frame["cv_accuracy_drop"] <= 0
    frame["pareto"] = False
    obj_cols = [f"obj_{o}" for o in objectives]
    for strategy in strategies:
        sel = (frame["strategy"] == strategy).to_numpy()
        mask = _pareto_loop(
            frame.loc[sel, obj_cols].to_numpy(), frame.loc[sel, "feasible"].to_numpy()
        )
        frame.loc[sel, "pareto"] = mask
    return frame


def _summary(
    frame: pd.DataFrame, objectives: Sequence[str], strategy: str, chosen: int, hypervolume: bool
) -> dict[str, Any]:
    costs, plat = backbone_costs(), platform()
    cum = np.cumsum(costs.segment_macs)
    first, last = plat.devices[0], plat.devices[-1]
    total = float(costs.total_macs)
    summary: dict[str, Any] = {
        "objectives": list(objectives),
        "strategy": strategy,
        "backbone": {
            "accuracy_val": BACKBONE_ACCURACY,
            "accuracy_test": 0.971,
            "macs": total,
            "energy_j_first": total * first.energy_per_mac_j
            + first.static_power_w * total / first.macs_per_second,
            "latency_s_first": total / first.macs_per_second,
            "energy_j_last": total * last.energy_per_mac_j
            + last.static_power_w * total / last.macs_per_second,
            "latency_s_last": total / last.macs_per_second,
        },
        "candidates": [
            {
                "name": n,
                "index": i,
                "shape": [int(costs.activation_elems[i])],
                "bytes_fp32": int(costs.activation_elems[i]) * 4,
                "bytes_int8": int(costs.activation_elems[i]),
                "cumulative_macs": int(cum[i]),
                "segment_macs": int(costs.segment_macs[i]),
                "segment_param_bytes": int(costs.segment_params[i]) * 4,
            }
            for i, n in enumerate(CANDIDATES)
        ],
        "heads": list(HEADS),
        "head_macs": costs.head_macs.tolist(),
        "platform": {
            "name": plat.name,
            "devices": [
                {"name": d.name, "activation_bits": d.activation_bits} for d in plat.devices
            ],
            "links": [{"name": link.name} for link in plat.links],
        },
        "chosen_trial": chosen,
        "input_shape": list(INPUT_SHAPE),
    }
    if hypervolume:
        summary.update(hypervolume_summary(frame, objectives))
    return summary


def _merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        both = isinstance(old, Mapping) and isinstance(value, Mapping)
        out[key] = _merged(old, value) if both else value
    return out


def write_fake_run(
    path: Path,
    *,
    seed: int = 0,
    objectives: Sequence[str] = ("error", "macs"),
    strategies: Sequence[str] = ("pymoo_nsga2", "random", "manual"),
    n_trials: int = 40,
    evaluated: bool = True,
    hypervolume: bool = True,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Write trials.parquet, pareto.csv, chosen.yaml, summary.json, config.yaml, evaluated.csv.

    ``hypervolume=False`` leaves summary.json's hypervolume keys out (readers must not need them).
    ``config`` is merged into config.yaml (nested mappings key by key), e.g. to give runs of
    different data the same ``seed`` key.
    """
    path.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(seed=seed, objectives=objectives, strategies=strategies, n_trials=n_trials)
    main = frame[(frame["strategy"] == strategies[0]) & frame["feasible"]]
    cost = next((o for o in objectives if o != "error"), "macs")
    chosen = main.sort_values(f"obj_{cost}" if f"obj_{cost}" in main else cost).iloc[0]
    frame.to_parquet(path / "trials.parquet", index=False)
    frame[frame["pareto"] & (frame["strategy"] == strategies[0])].to_csv(
        path / "pareto.csv", index=False
    )
    summary = _summary(frame, objectives, strategies[0], int(chosen["trial"]), hypervolume)
    write_summary(path, summary)
    figures = {k: float(chosen[k]) for k in ("accuracy", "error", "macs", "energy_j", "latency_s")}
    (path / "chosen.yaml").write_text(
        yaml.safe_dump(
            {  # the shape search/results.py writes
                "strategy": strategies[0],
                "feasible": True,
                "message": "",
                "trial": int(chosen["trial"]),
                "objectives": {o: float(chosen[f"obj_{o}"]) for o in objectives},
                "config": json.loads(chosen["config"]),
                "val": {**figures, "exit_fractions": json.loads(chosen["exit_fractions"])},
                "test": {
                    **figures,
                    "accuracy": figures["accuracy"] - 0.004,
                    "error": figures["error"] + 0.004,
                },
            },
            sort_keys=False,
        )
    )
    composed = {
        "seed": seed,
        "model": {"name": "mnist_cnn"},
        "search": {"backend": strategies[0]},
        "objectives": list(objectives),
    }
    (path / "config.yaml").write_text(yaml.safe_dump(_merged(composed, config or {})))
    if evaluated:
        rng = np.random.default_rng(seed + 1)
        pts = frame[frame["pareto"] & (frame["strategy"] == strategies[0])]
        pd.DataFrame(
            {
                "trial": pts["trial"],
                "predicted_accuracy": pts["accuracy"],
                "measured_accuracy_val": pts["accuracy"],
                "measured_accuracy_test": pts["accuracy"] - rng.uniform(0, 0.01, len(pts)),
                "predicted_macs": pts["macs"],
                "measured_macs": pts["macs"] * rng.uniform(0.98, 1.02, len(pts)),
            }
        ).to_csv(path / "evaluated.csv", index=False)
    return path


def write_custom_run(
    path: Path,
    rows: Sequence[dict[str, Any]],
    *,
    objectives: Sequence[str] = ("error", "macs"),
    main: str = "pymoo_nsga2",
) -> Path:
    """Write a run folder whose trials are exactly ``rows`` (dicts: accuracy, obj_*, feasible...).

    Missing schema columns get neutral defaults (no exits, all samples at the classifier).
    """
    path.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(list(rows))
    defaults: dict[str, Any] = {
        "strategy": main,
        "generation": 0,
        "pareto": False,
        "config": _config_json(EENNConfig(exits=(), boundaries=(6, 6))),
        "exit_fractions": "[1.0]",
        "exit_accuracy": "[1.0]",
    }
    for column, value in defaults.items():
        frame[column] = frame[column].fillna(value) if column in frame else value
    if "trial" not in frame:
        frame.insert(0, "trial", np.arange(len(frame)))
    if "obj_error" in frame and "accuracy" not in frame:
        frame["accuracy"] = 1.0 - frame["obj_error"]
    frame["error"] = 1.0 - frame["accuracy"]
    for o, column in _OBJ_COLUMN.items():
        if column not in frame:
            frame[column] = frame.get(f"obj_{o}", 0.0)
    frame.to_parquet(path / "trials.parquet", index=False)
    write_summary(path, _summary(frame, objectives, main, int(frame["trial"].iloc[0]), True))
    return path
