"""The run folder's one contract: file names, schema version, reading back, fronts, hypervolume.

Every file of a run folder, every column of ``trials.parquet`` and ``pareto.csv``
and every ``summary.json`` key is documented in ``results/README.md``; this
module is the code that README cites. Writers (``search.results``,
``search.run``), the report and comparison (``search.report``) and the
deployment side (evaluate, export) take names, flags and figures from here;
nobody else recomputes a front or a hypervolume.

Schema version: ``summary.json`` carries ``schema_version`` (:data:`SCHEMA_VERSION`).
A folder without it predates versioning and has the version-1 layout; a newer or
unknown version is a one-line :class:`RunFolderError` on read. Version 2 added the
certified chosen point: ``guarantee`` in ``chosen.yaml`` and ``summary.json`` (method,
epsilon, delta, calibration size, certified bound; :func:`guarantee_of` reads it from
either version), the ``status`` value ``not_certified``, ``chosen.yaml``'s
``calibration`` figures, and certification-path trials (``generation`` -1), one of which
may be the chosen point while off the front.

Pareto flags: a trial is on the front when it is feasible and no feasible trial
of the same strategy dominates it (all ``obj_*`` columns, minimised; pymoo's
non-dominated sorting). Equal points are all on the front.

Hypervolume, the one definition used by summary.json, the report and the
comparison page:

- objectives: the run's ``obj_*`` columns, all of them, minimised (``error``,
  not accuracy);
- points: the feasible trials of one strategy (for the report's progress curve,
  those among its first k trials);
- normalisation: each objective is mapped to [0, 1] by ``(v - ideal) / span``,
  with ideal (min) and nadir (max) over the feasible trials of every strategy
  of the run and ``span = nadir - ideal`` (1 where all feasible trials share one
  value);
- reference point: 1.1 in every normalised objective, i.e. ``ideal + 1.1 * span``
  (nadir + 10% of the range) in raw units, so every feasible trial counts;
- computed with :class:`pymoo.indicators.hv.HV`; values lie in [0, 1.1^m].

Several runs (the comparison page) use the same rule on the objectives they all
share, with ideal and nadir over the union of the feasible trials of every
strategy of every compared run: one common scale and reference, and a run
compared with itself gets the value in its own ``summary.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from numpy.typing import NDArray
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pymoo.indicators.hv import HV
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from evaluators._cache import atomic_write
from evaluators.eenn import METRICS, EENNConfig, ExitChoice
from evaluators.proxy import ConfigBatch
from evaluators.settings import plain

__all__ = [
    "CHOSEN",
    "CONFIG",
    "EVALUATED",
    "EXPORT",
    "HV_REFERENCE",
    "HYDRA_CONFIG",
    "MANIFEST",
    "MANIFEST_INT8",
    "OPTUNA_DB",
    "PARETO",
    "PATH_GENERATION",
    "REPORT",
    "SCHEMA_VERSION",
    "SUMMARY_JSON",
    "SUMMARY_TXT",
    "TRIALS",
    "WORKER",
    "HypervolumeScale",
    "Run",
    "RunFolderError",
    "batch_to_json",
    "check_schema_version",
    "config_from_json",
    "config_to_json",
    "export_dir",
    "front_mask",
    "guarantee_of",
    "hypervolume_curve",
    "hypervolume_scale",
    "hypervolume_summary",
    "hypervolumes",
    "json_list",
    "load_run",
    "non_dominated",
    "pareto_flags",
    "write_summary"
]

#: Version of the layout below; written into summary.json, checked by :func:`load_run`.
SCHEMA_VERSION = 2

#: ``generation`` of the trials on a certification path (evaluators.risk.certification_path)
PATH_GENERATION = -1

TRIALS = "trials.parquet"  # every evaluated trial (search.results.TrialLog)
PARETO = "pareto.csv"  # the main strategy's front rows (search.results.write_results)
CHOSEN = "chosen.yaml"  # the chosen point and its val/test figures (write_results)
SUMMARY_JSON = "summary.json"  # run facts and hypervolumes (search.run)
SUMMARY_TXT = "summary.txt"  # the closing terminal table (search.run)
CONFIG = "config.yaml"  # the composed, resolved config (search.run)
HYDRA_CONFIG = ".hydra/config.yaml"  # Hydra's copy, read when config.yaml is absent
REPORT = "report.html"  # search.report.write_report
EVALUATED = "evaluated.csv"  # evaluate: the points run as real EENNs
EXPORT = "export"  # export: export/trial_<n>/ (export_dir)
MANIFEST = "manifest.json"  # in an export folder, beside stage<i>_<device>.onnx
MANIFEST_INT8 = "manifest_int8.json"  # in an export folder, with --int8
OPTUNA_DB = "optuna.db"  # the Optuna backends' study when no storage URL is given
WORKER = "worker.json"  # python -m search.worker

#: The reference point in normalised objective space (nadir + 10% of the range).
HV_REFERENCE = 1.1

_REQUIRED_COLUMNS = ("trial", "strategy", "config", "accuracy", "feasible")


class RunFolderError(ValueError):
    """A run folder (or one of its files) that does not follow the schema; one line, with a fix."""


def export_dir(run_dir: Path, trial: int) -> Path:
    """Where export writes trial ``trial``'s graphs and manifest."""
    return Path(run_dir) / EXPORT / f"trial_{int(trial)}"


# --- configurations ------------------------------------------------------------------------------


def config_to_json(cfg: EENNConfig) -> str:
    """The ``config`` column: an EENN configuration as JSON (exits, boundaries, metric)."""
    return json.dumps({"exits": [{"candidate": e.candidate, "head": e.head,
                                  "threshold": e.threshold} for e in cfg.exits],
                       "boundaries": list(cfg.boundaries), "metric": cfg.metric})


_TEXT: dict[Any, str] = {None: "null"}  # number -> its JSON text (values repeat: counts / N)


def json_list(row: Sequence[Any]) -> str:
    """``json.dumps`` of a flat list of numbers and None, without its per-call overhead."""
    text = _TEXT
    if len(text) > 1_000_000:
        text.clear()
        text[None] = "null"
    return "[" + ", ".join([text.get(v) or text.setdefault(v, repr(v)) for v in row]) + "]"


def batch_to_json(batch: ConfigBatch) -> list[str]:
    """:func:`config_to_json`'s exact text for every row of a batch, built from its arrays.

    The search loop writes a batch at a time; building each config object and calling
    ``json.dumps`` per row would cost more than scoring it. A test keeps the two equal.
    """
    out = []
    for cand, head, thr, bnd, met in zip(batch.candidate.tolist(), batch.head.tolist(),
                                         batch.threshold.tolist(), batch.boundaries.tolist(),
                                         batch.metric.tolist(), strict=True):
        exits = ", ".join(f'{{"candidate": {c}, "head": {h}, "threshold": {t!r}}}'
                          for c, h, t in zip(cand, head, thr, strict=True) if c >= 0)
        out.append(f'{{"exits": [{exits}], "boundaries": {json_list(bnd)}, '
                   f'"metric": "{METRICS[met]}"}}')
    return out


def config_from_json(text: str, *, where: str = "config") -> EENNConfig:
    """Inverse of :func:`config_to_json`; a malformed value is a one-line error naming ``where``."""
    try:
        d = json.loads(text)
        return EENNConfig(
            exits=tuple(ExitChoice(candidate=int(e["candidate"]), head=int(e["head"]),
                                   threshold=float(e["threshold"])) for e in d["exits"]),
            boundaries=tuple(int(b) for b in d["boundaries"]), metric=str(d["metric"]))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise RunFolderError(f"{where}: {text!r} is not an EENN configuration JSON "
                             f"({type(exc).__name__}: {exc}); see results/README.md") from None


# --- Pareto flags --------------------------------------------------------------------------------


def non_dominated(values: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Mask of the rows of ``values`` (minimised) that no other row dominates."""
    mask = np.zeros(len(values), dtype=bool)
    if len(values):
        mask[NonDominatedSorting().do(values, only_non_dominated_front=True)] = True
    return mask


def front_mask(values: NDArray[np.float64], feasible: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Mask of the feasible rows of ``values`` that no other feasible row dominates."""
    mask = np.zeros(len(values), dtype=bool)
    idx = np.flatnonzero(feasible)
    mask[idx[non_dominated(values[idx])]] = True
    return mask


def pareto_flags(trials: pd.DataFrame, objectives: Sequence[str]) -> NDArray[np.bool_]:
    """The ``pareto`` column: on the front of its own strategy (feasible rows, all objectives)."""
    flags = np.zeros(len(trials), dtype=bool)
    if not len(trials):
        return flags
    values = trials[[f"obj_{o}" for o in objectives]].to_numpy(dtype=np.float64)
    feasible = trials["feasible"].to_numpy(dtype=bool)
    for pos in trials.groupby("strategy", sort=False).indices.values():
        flags[pos] = front_mask(values[pos], feasible[pos])
    return flags


# --- hypervolume ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HypervolumeScale:
    """The normalisation and reference point of the one hypervolume definition (module doc)."""

    objectives: tuple[str, ...]
    ideal: tuple[float, ...]
    nadir: tuple[float, ...]

    @property
    def span(self) -> NDArray[np.float64]:
        span = np.asarray(self.nadir) - np.asarray(self.ideal)
        return np.where(span > 0, span, 1.0)

    @property
    def reference(self) -> tuple[float, ...]:
        """The reference point in raw objective units."""
        ref = np.asarray(self.ideal) + HV_REFERENCE * self.span
        return tuple(float(v) for v in ref)

    def hypervolume(self, values: NDArray[np.float64]) -> float:
        """Hypervolume of raw objective ``values`` (rows: points); 0 for no points."""
        if len(values) == 0:
            return 0.0
        scaled = (np.asarray(values, dtype=np.float64) - np.asarray(self.ideal)) / self.span
        indicator = HV(ref_point=np.full(len(self.objectives), HV_REFERENCE))
        return float(indicator(scaled))


def hypervolume_scale(trials: Iterable[pd.DataFrame],
                      objectives: Sequence[str]) -> HypervolumeScale | None:
    """The scale over the feasible rows of all ``trials`` frames (None: nothing is feasible).

    One frame: a run's scale. Several: the common scale of a comparison (their union).
    """
    cols = [f"obj_{o}" for o in objectives]
    parts = [t.loc[t["feasible"].astype(bool), cols].to_numpy(dtype=np.float64)
             for t in trials if len(t)]
    values = np.concatenate(parts) if parts else np.zeros((0, len(cols)))
    if not len(values):
        return None
    return HypervolumeScale(objectives=tuple(objectives),
                            ideal=tuple(float(v) for v in values.min(axis=0)),
                            nadir=tuple(float(v) for v in values.max(axis=0)))


def hypervolume_curve(values: NDArray[np.float64], feasible: NDArray[np.bool_],
                      scale: HypervolumeScale | None) -> NDArray[np.float64]:
    """Hypervolume of the feasible points among the first k rows, for k = 1..n (rows in order)."""
    curve = np.zeros(len(values))
    if scale is None:
        return curve
    front = np.empty((0, values.shape[1]))
    current = 0.0
    for i, (f, ok) in enumerate(zip(values, feasible, strict=True)):
        if ok and not np.any(np.all(front <= f, axis=1)):  # the running front changes
            front = np.vstack([front[~np.all(f <= front, axis=1)], f])
            current = scale.hypervolume(front)
        curve[i] = current
    return curve


def _per_strategy(trials: pd.DataFrame, objectives: Sequence[str],
                  scale: HypervolumeScale | None) -> dict[str, float]:
    cols = [f"obj_{o}" for o in objectives]
    out: dict[str, float] = {}
    for strategy, rows in trials.groupby("strategy", sort=False):
        feasible = rows[rows["feasible"].astype(bool)][cols].to_numpy(dtype=np.float64)
        out[str(strategy)] = scale.hypervolume(feasible) if scale is not None else 0.0
    return out


def hypervolumes(trials: pd.DataFrame,
                 objectives: Sequence[str]) -> tuple[dict[str, float], list[float]]:
    """Each strategy's hypervolume and the run's reference point in raw units ([] if none)."""
    if not len(trials):
        return {}, []
    scale = hypervolume_scale([trials], objectives)
    return (_per_strategy(trials, objectives, scale),
            list(scale.reference) if scale is not None else [])


def hypervolume_summary(trials: pd.DataFrame, objectives: Sequence[str]) -> dict[str, Any]:
    """summary.json's hypervolume keys: values per strategy, reference, ideal and nadir."""
    scale = hypervolume_scale([trials], objectives) if len(trials) else None
    return {
        "hypervolume": _per_strategy(trials, objectives, scale) if len(trials) else {},
        "hypervolume_reference": None if scale is None else list(scale.reference),
        "hypervolume_ideal": None if scale is None else list(scale.ideal),
        "hypervolume_nadir": None if scale is None else list(scale.nadir),
    }


# --- summary.json --------------------------------------------------------------------------------


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> Path:
    """Write summary.json with :data:`SCHEMA_VERSION` first (temp file, then rename)."""
    path = Path(run_dir) / SUMMARY_JSON
    text = json.dumps({"schema_version": SCHEMA_VERSION, **summary}, indent=2, default=float)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def check_schema_version(summary: Mapping[str, Any], *, where: Path) -> int:
    """The folder's schema version (1 when unversioned); newer or unknown is a one-line error."""
    version = summary.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) \
            or not 1 <= version <= SCHEMA_VERSION:
        raise RunFolderError(
            f"{where / SUMMARY_JSON} has schema_version={version!r}, this code reads versions "
            f"1..{SCHEMA_VERSION}; update eenn-search or read it with the release that wrote it")
    return version


def guarantee_of(summary: Mapping[str, Any],
                 chosen: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The chosen point's ``guarantee`` record (``method`` ``uncertified`` for version 1).

    Version 1 folders have none: their bound is ``chosen.yaml``'s val ``accuracy_drop_ub``.
    """
    record = summary.get("guarantee") or (chosen or {}).get("guarantee")
    if record:
        return dict(record)
    val = (chosen or {}).get("val") or {}
    return {"method": "uncertified", "certified": False,
            "drop_bound": val.get("accuracy_drop_ub")}


# --- reading a run back --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Run:
    """The files of one run folder, checked and parsed (read-only)."""

    path: Path
    trials: pd.DataFrame  # sorted by trial
    summary: dict[str, Any]
    chosen: dict[str, Any] | None
    evaluated: pd.DataFrame | None
    config: dict[str, Any] | None  # config.yaml, else .hydra/config.yaml, resolved

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
        parts = [(cfg.get("model") or {}).get("name"),
                 (self.summary.get("platform") or {}).get("name"), self.strategy,
                 f"seed {cfg['seed']}" if "seed" in cfg else None]
        extra = ", ".join(str(p) for p in parts if p is not None)
        return f"{self.path.name} ({extra})" if extra else self.path.name


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads((path / SUMMARY_JSON).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path / SUMMARY_JSON} is not valid JSON ({exc}); "
                             "rerun python -m search on this folder") from None
    if not isinstance(summary, dict) or not summary.get("objectives"):
        raise RunFolderError(f"{path / SUMMARY_JSON} has no 'objectives' list; "
                             "it is not a run summary")
    check_schema_version(summary, where=path)
    return summary


def _read_trials(path: Path, objectives: Sequence[str]) -> pd.DataFrame:
    try:
        trials = pd.read_parquet(path / TRIALS)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise RunFolderError(f"{path / TRIALS} cannot be read ({exc}); "
                             "rerun python -m search on a new folder") from None
    needed = [*_REQUIRED_COLUMNS, *(f"obj_{o}" for o in objectives)]
    missing = [c for c in needed if c not in trials.columns]
    if missing:
        raise RunFolderError(f"{path / TRIALS} lacks columns {missing}; "
                             "rewrite it per results/README.md")
    if trials.empty:
        raise RunFolderError(f"{path / TRIALS} has no trials; the run evaluated nothing")
    trials = trials.sort_values("trial", kind="stable").reset_index(drop=True)
    trials["feasible"] = trials["feasible"].astype(bool)
    return trials


def _read_yaml(file: Path, *, resolve: bool = False) -> dict[str, Any] | None:
    if not file.is_file():
        return None
    try:
        # a config (resolve): Hydra's own copy may hold interpolations
        data = plain(OmegaConf.load(file)) if resolve else yaml.safe_load(file.read_text())
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunFolderError(f"{file} cannot be read ({message}); rewrite or delete it") from None
    return {str(k): v for k, v in data.items()} if isinstance(data, dict) else None


def _read_evaluated(file: Path) -> pd.DataFrame | None:
    if not file.is_file():
        return None
    try:
        frame = pd.read_csv(file)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{file} cannot be read as CSV ({exc}); "
                             "rewrite or delete it") from None
    return frame if "trial" in frame.columns and not frame.empty else None


def load_run(path: Path) -> Run:
    """Read and check one run folder; a :class:`RunFolderError` names what is wrong and the fix.

    ``trials.parquet`` and ``summary.json`` are required; ``chosen.yaml``,
    ``evaluated.csv`` and the config are read when present.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"run folder {path} does not exist (or is not a folder); pass "
                             "a run folder such as results/runs/<date_time>")
    missing = [n for n in (TRIALS, SUMMARY_JSON) if not (path / n).is_file()]
    if missing:
        raise RunFolderError(f"{path} is not a finished run folder: missing "
                             f"{', '.join(missing)} (no results yet); finish it with "
                             "python -m search and the same hydra.run.dir")
    summary = _read_summary(path)
    config = (_read_yaml(path / CONFIG, resolve=True)
              or _read_yaml(path / HYDRA_CONFIG, resolve=True))
    return Run(path=path, trials=_read_trials(path, [str(o) for o in summary["objectives"]]),
               summary=summary, chosen=_read_yaml(path / CHOSEN),
               evaluated=_read_evaluated(path / EVALUATED), config=config)
