"""MIT-BIH Arrhythmia beats in the five AAMI classes (N, S, V, F, Q), read with ``wfdb``.

Each annotated beat becomes a ``window``-sample segment of one lead starting ``before``
samples ahead of its R peak, standardised per beat. Beats are pooled over records, so the
stratified splits follow the common intra-patient protocol (optimistic compared with the
inter-patient DS1/DS2 split; restrict ``data.records`` to build that yourself).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluators.data._pool import DataError, Pool, missing_data

__all__ = ["AAMI", "download", "load"]

AAMI: dict[str, str] = {"N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ"}
_CLASS = {symbol: i for i, symbols in enumerate(AAMI.values()) for symbol in symbols}


def download(root: Path) -> None:
    """Fetch the 48 records of PhysioNet's ``mitdb`` into ``root`` (about 100 MB)."""
    import wfdb

    wfdb.dl_database("mitdb", dl_dir=str(root))


def _records(root: Path, wanted: list[Any] | None) -> list[str]:
    if wanted:
        names = [str(r) for r in wanted]
        for name in names:
            if not (root / f"{name}.hea").is_file():
                raise missing_data(root / f"{name}.hea", f"MIT-BIH record {name}")
        return names
    names = sorted(p.stem for p in root.glob("*.hea") if (root / f"{p.stem}.atr").is_file())
    if not names:
        raise missing_data(root, "MIT-BIH records (<record>.hea/.dat/.atr)")
    return names


def _beats(
    root: Path, record: str, *, lead: str, before: int, window: int
) -> tuple[np.ndarray, np.ndarray]:
    import wfdb

    try:
        with warnings.catch_warnings():  # wfdb's own pandas deprecation warnings are not ours
            warnings.filterwarnings("ignore", module=r"wfdb(\.|$)")
            rec = wfdb.rdrecord(str(root / record))
            ann = wfdb.rdann(str(root / record), "atr")
    except (OSError, ValueError) as err:
        raise DataError(
            f"cannot read MIT-BIH record {root / record} ({err}); re-download with "
            "data.download=true"
        ) from err
    channel = rec.sig_name.index(lead) if lead in rec.sig_name else 0
    signal = np.asarray(rec.p_signal[:, channel], dtype=np.float32)
    symbols = np.asarray(ann.symbol)
    samples = np.asarray(ann.sample, dtype=np.int64)
    ok = (
        np.isin(symbols, list(_CLASS))
        & (samples >= before)
        & (samples - before + window <= len(signal))
    )
    starts = samples[ok] - before
    segments = signal[starts[:, None] + np.arange(window)]
    labels = np.array([_CLASS[s] for s in symbols[ok]], dtype=np.int64)
    return segments, labels


def load(cfg: dict[str, Any], *, seed: int) -> Pool:
    """Every annotated beat of the chosen records as standardised float32 (N, 1, window)."""
    del seed
    root = Path(str(cfg.get("root") or "data/mitbih")).expanduser()
    if not any(root.glob("*.hea")) and cfg.get("download"):
        download(root)
    window, before = int(cfg.get("window", 187)), int(cfg.get("before", 90))
    if not 0 <= before < window:
        raise DataError(f"data.before={before} must lie in [0, data.window={window}); lower it")
    parts = [
        _beats(root, r, lead=str(cfg.get("lead", "MLII")), before=before, window=window)
        for r in _records(root, cfg.get("records"))
    ]
    beats = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if len(labels) == 0:
        raise DataError(
            f"no AAMI-labelled beats in the records under {root}; check data.root and data.records"
        )
    beats = (beats - beats.mean(axis=1, keepdims=True)) / np.maximum(
        beats.std(axis=1, keepdims=True), 1e-6
    )
    tensor = torch.from_numpy(beats.astype(np.float32)).unsqueeze(1)
    return Pool(
        labels=labels, class_names=tuple(AAMI), read=lambda idx: tensor[torch.as_tensor(idx)]
    )
