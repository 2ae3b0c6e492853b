"""Read one run folder (the schema in the run-folder contract) into a checked :class:`Run`.

Only ``trials.parquet`` and ``summary.json`` are required; ``chosen.yaml``,
``evaluated.csv`` and the composed ``config.yaml`` are used when present. Every
problem is a one-line :class:`ReportError` that names the folder and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from evaluators.eenn import EENNConfig, ExitChoice

__all__ = ["OBJECTIVE_LABELS", "ReportError", "Run", "load_run", "parse_config"]

#: Axis label of each objective name; ``error`` is always shown as accuracy.
OBJECTIVE_LABELS: dict[str, str] = {
    "error": "accuracy (val)",
    "macs": "MACs per sample",
    "energy": "energy per sample (J)",
    "latency": "latency per sample (s)",
}
_REQUIRED_COLUMNS = ("trial", "strategy", "config", "accuracy", "feasible")


class ReportError(ValueError):
    """A run folder that cannot be reported on: missing files, columns or values."""


@dataclass(frozen=True, kw_only=True)
class Run:
    """The files of one run folder, checked and parsed (read-only)."""

    path: Path
    trials: pd.DataFrame
    summary: dict[str, Any]
    chosen: dict[str, Any] | None
    evaluated: pd.DataFrame | None
    config: dict[str, Any] | None

    @property
    def objectives(self) -> tuple[str, ...]:
        return tuple(str(o) for o in self.summary["objectives"])

    @property
    def strategy(self) -> str:
        """The main (configured) strategy; reference strategies are the others."""
        return str(self.summary.get("strategy") or self.trials["strategy"].iloc[0])

    @property
    def candidate_names(self) -> tuple[str, ...]:
        return tuple(
            str(c.get("name", i)) for i, c in enumerate(self.summary.get("candidates", []))
        )

    @property
    def device_names(self) -> tuple[str, ...]:
        devices = (self.summary.get("platform") or {}).get("devices") or []
        return tuple(str(d.get("name", f"device{i}")) for i, d in enumerate(devices))

    @property
    def label(self) -> str:
        """A short human name: folder plus model / platform / backend / seed when known."""
        cfg = self.config or {}
        parts = [
            (cfg.get("model") or {}).get("name"),
            (self.summary.get("platform") or {}).get("name"),
            self.strategy,
            f"seed {cfg['seed']}" if "seed" in cfg else None,
        ]
        extra = ", ".join(str(p) for p in parts if p is not None)
        return f"{self.path.name} ({extra})" if extra else self.path.name


def parse_config(text: str, *, where: str) -> EENNConfig:
    """Decode the ``config`` JSON column into the shared :class:`EENNConfig` value."""
    try:
        raw = json.loads(text)
        return EENNConfig(
            exits=tuple(
                ExitChoice(
                    candidate=int(e["candidate"]),
                    head=int(e["head"]),
                    threshold=float(e["threshold"]),
                )
                for e in raw.get("exits", [])
            ),
            boundaries=tuple(int(b) for b in raw.get("boundaries", [])),
            metric=str(raw.get("metric", "max_softmax")),
        )
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ReportError(f"{where}: config {text!r} is not an EENNConfig JSON ({exc})") from None


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads((path / "summary.json").read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{path / 'summary.json'} is not valid JSON ({exc}); rewrite it"
        ) from None
    if not isinstance(summary, dict) or not summary.get("objectives"):
        raise ReportError(
            f"{path / 'summary.json'} has no 'objectives' list; it is not a run summary"
        )
    return summary


def _read_trials(path: Path, objectives: tuple[str, ...]) -> pd.DataFrame:
    try:
        trials = pd.read_parquet(path / "trials.parquet")
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise ReportError(f"{path / 'trials.parquet'} cannot be read ({exc})") from None
    needed = [*_REQUIRED_COLUMNS, *(f"obj_{o}" for o in objectives)]
    missing = [c for c in needed if c not in trials.columns]
    if missing:
        raise ReportError(
            f"{path / 'trials.parquet'} lacks columns {missing}; rewrite it per the schema"
        )
    if trials.empty:
        raise ReportError(f"{path / 'trials.parquet'} has no trials; the run evaluated nothing")
    trials = trials.sort_values("trial", kind="stable").reset_index(drop=True)
    trials["feasible"] = trials["feasible"].astype(bool)
    return trials


def _read_yaml(file: Path) -> dict[str, Any] | None:
    if not file.is_file():
        return None
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ReportError(f"{file} is not valid YAML ({exc}); rewrite or delete it") from None
    return data if isinstance(data, dict) else None


def _read_evaluated(file: Path) -> pd.DataFrame | None:
    if not file.is_file():
        return None
    try:
        frame = pd.read_csv(file)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ReportError(f"{file} cannot be read as CSV ({exc}); rewrite or delete it") from None
    return frame if "trial" in frame.columns and not frame.empty else None


def load_run(path: Path) -> Run:
    """Read and check one run folder; raise :class:`ReportError` naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(
            f"{path} is not a folder; pass a run folder such as results/runs/<date_time>"
        )
    missing = [n for n in ("trials.parquet", "summary.json") if not (path / n).is_file()]
    if missing:
        raise ReportError(f"{path} is not a run folder: missing {', '.join(missing)}")
    summary = _read_summary(path)
    trials = _read_trials(path, tuple(str(o) for o in summary["objectives"]))
    config = _read_yaml(path / "config.yaml") or _read_yaml(path / ".hydra" / "config.yaml")
    return Run(
        path=path,
        trials=trials,
        summary=summary,
        chosen=_read_yaml(path / "chosen.yaml"),
        evaluated=_read_evaluated(path / "evaluated.csv"),
        config=config,
    )
