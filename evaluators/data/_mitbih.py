"""MIT-BIH Arrhythmia beats in the five AAMI classes (N, S, V, F, Q), read with ``wfdb``.

Each annotated beat becomes a ``window``-sample segment of one lead starting ``before``
samples ahead of its R peak, standardised per beat. Two protocols (``data.protocol``):

* ``intra_patient`` (default): beats are pooled over records and split stratified, the
  common setting of the 187-sample beat benchmarks; optimistic, since train and test share
  patients.
* ``inter_patient``: de Chazal et al.'s split (IEEE TBME 51(7), 2004,
  doi:10.1109/TBME.2004.827359): test beats come only from the 22 DS2 records, train and
  val beats from the 22 DS1 records; the four paced records are left out. ``val_records``
  holds whole DS1 records out for val, so that threshold calibration sees unseen patients.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluators._config import Group
from evaluators.data._pool import DataError, Pool, missing_data
from evaluators.data.settings import DataSettings, LoaderOptions

__all__ = ["AAMI", "DS1", "DS2", "PROTOCOLS", "MitbihOptions", "download", "load"]

AAMI: dict[str, str] = {"N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ"}
_CLASS = {symbol: i for i, symbols in enumerate(AAMI.values()) for symbol in symbols}
# de Chazal et al. 2004; the paced records 102, 104, 107 and 217 belong to neither
DS1 = ("101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122", "124",
       "201", "203", "205", "207", "208", "209", "215", "220", "223", "230")
DS2 = ("100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210", "212",
       "213", "214", "219", "221", "222", "228", "231", "232", "233", "234")
PROTOCOLS = ("intra_patient", "inter_patient")


def _record(value: object) -> str:
    """A record name: ``100`` and ``"100"`` alike."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(value)
    return str(value)


@dataclass(frozen=True, kw_only=True)
class MitbihOptions(LoaderOptions):
    """``conf/data/mitbih.yaml``'s own keys (see the module doc for the two protocols)."""

    records: tuple[str, ...] | None = None  # None: every <record>.hea with a .atr under root
    protocol: str = "intra_patient"
    val_records: tuple[str, ...] | None = None  # inter_patient: DS1 records held out for val
    lead: str = "MLII"  # signal name to use; falls back to the first channel
    window: int = 187  # samples per beat (0.52 s at 360 Hz)
    before: int = 90  # samples before the R peak

    @classmethod
    def from_group(cls, g: Group) -> MitbihOptions:
        d = cls()
        protocol = g.text("protocol", d.protocol)
        if protocol not in PROTOCOLS:
            raise DataError(f"data.protocol={protocol!r} is unknown; use one of {list(PROTOCOLS)}")
        names = "a list of record names"
        options = cls(
            records=g.items("records", d.records, item=_record, optional=True, what=names),
            protocol=protocol,
            val_records=g.items("val_records", d.val_records, item=_record, optional=True,
                                what=names),
            lead=g.text("lead", d.lead), window=g.integer("window", d.window, low=1),
            before=g.integer("before", d.before, low=0))
        options.check()
        return options

    def check(self) -> None:
        """The protocol, records and beat window agree (one-line errors naming the fix)."""
        if not self.before < self.window:
            raise DataError(f"data.before={self.before} must lie in [0, data.window="
                            f"{self.window}); lower it")
        if self.protocol == "intra_patient":
            if self.val_records:
                raise DataError("data.val_records needs data.protocol=inter_patient; drop it or "
                                "switch the protocol")
            return
        if self.records:
            raise DataError("data.records and data.protocol=inter_patient both choose records; "
                            "set data.records=null (the protocol reads DS1 and DS2)")
        stray = sorted(set(self.val_records or ()) - set(DS1))
        if stray:
            raise DataError(f"data.val_records={stray} are not DS1 records; choose from "
                            f"{list(DS1)}")
        if len(self.val_records or ()) == len(DS1):
            raise DataError("data.val_records holds out every DS1 record; leave some for train")


def download(root: Path) -> None:
    """Fetch the 48 records of PhysioNet's ``mitdb`` into ``root`` (about 100 MB)."""
    import wfdb

    wfdb.dl_database("mitdb", dl_dir=str(root))


def _records(root: Path, wanted: list[str] | None) -> list[str]:
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


def load(data: DataSettings, *, seed: int) -> Pool:
    """Every annotated beat of the chosen records as standardised float32 (N, 1, window)."""
    del seed
    opts = data.options
    assert isinstance(opts, MitbihOptions), "DataSettings.from_mapping picks the loader's options"
    root = data.folder()
    if not any(root.glob("*.hea")) and data.download:
        download(root)
    wanted, partition = _protocol(opts)
    records = _records(root, wanted)
    parts = [_beats(root, r, lead=opts.lead, before=opts.before, window=opts.window)
             for r in records]
    beats = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    groups = None if partition is None else np.concatenate(
        [np.full(len(p[1]), partition[r]) for p, r in zip(parts, records, strict=True)])
    if len(labels) == 0:
        raise DataError(
            f"no AAMI-labelled beats in the records under {root}; check data.root and data.records"
        )
    beats = (beats - beats.mean(axis=1, keepdims=True)) / np.maximum(
        beats.std(axis=1, keepdims=True), 1e-6
    )
    tensor = torch.from_numpy(beats.astype(np.float32)).unsqueeze(1)
    return Pool(
        labels=labels, class_names=tuple(AAMI), read=lambda idx: tensor[torch.as_tensor(idx)],
        groups=groups,
    )


def _protocol(opts: MitbihOptions) -> tuple[list[str] | None, dict[str, str] | None]:
    """The records to read and, for the inter-patient protocol, the partition of each."""
    if opts.protocol == "intra_patient":
        return (None if opts.records is None else list(opts.records)), None
    held = set(opts.val_records or ())
    partition = {r: "val" if r in held else ("fit" if not held else "train") for r in DS1}
    return [*DS1, *DS2], {**partition, **dict.fromkeys(DS2, "test")}
