"""Google Speech Commands v2 in the usual 12-class keyword-spotting setting, as MFCC features.

Ten words, ``_unknown_`` (every other word, subsampled to ``unknown_percentage`` of the known
clips per partition) and ``_silence_`` (1 s crops of ``_background_noise_`` at a random volume,
``silence_percentage`` of the known clips). The official ``validation_list.txt`` /
``testing_list.txt`` partition is kept (``official_splits``); silence crops come from disjoint
stretches of each noise file (first 80 % train, next 10 % val, last 10 % test) so no noise is
shared between splits. Features are computed only for the clips the splits draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from evaluators._config import Group
from evaluators.data._audio import MfccSpec, mfcc
from evaluators.data._pool import DataError, Pool, missing_data
from evaluators.data.settings import DataSettings, LoaderOptions

__all__ = ["URL", "WORDS", "SpeechCommandsOptions", "download", "load"]

URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
_NOISE = "_background_noise_"
_NOISE_SPANS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}


@dataclass(frozen=True)
class _Clip:
    """A word clip (``path``) or a silence crop (noise file ``noise``, ``start``, ``volume``)."""

    path: Path | None
    noise: int = -1
    start: int = 0
    volume: float = 0.0


def download(root: Path) -> None:
    """Fetch and unpack the official archive (about 2.3 GB) into ``root``."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(URL, download_root=str(root), extract_root=str(root))


def _read_wav(path: Path, spec: MfccSpec) -> np.ndarray:
    from scipy.io import wavfile  # imported when audio is read: scipy.signal takes seconds

    try:
        rate, data = wavfile.read(path)
    except (OSError, ValueError) as err:
        raise DataError(
            f"cannot read WAV file {path} ({err}); replace it or re-download with "
            "data.download=true"
        ) from err
    raw = np.asarray(data)
    wave: np.ndarray = (
        raw.astype(np.float32) / 32768.0 if raw.dtype == np.int16 else raw.astype(np.float32)
    )
    wave = wave.mean(axis=1) if wave.ndim == 2 else wave
    if rate != spec.sample_rate:
        from scipy.signal import resample_poly

        g = math.gcd(rate, spec.sample_rate)
        wave = np.asarray(resample_poly(wave, spec.sample_rate // g, rate // g), dtype=np.float32)
    return wave


def _fit(wave: np.ndarray, n: int) -> np.ndarray:
    return wave[:n] if len(wave) >= n else np.pad(wave, (0, n - len(wave)))


def _partition(root: Path, rel: list[str], official: bool) -> np.ndarray | None:
    if not official:
        return None
    lists = {}
    for split, fname in (("val", "validation_list.txt"), ("test", "testing_list.txt")):
        path = root / fname
        if not path.is_file():
            raise missing_data(
                path, "Speech Commands split list (or set data.official_splits=false)"
            )
        lists[split] = set(path.read_text().split())
    return np.array(
        ["val" if r in lists["val"] else "test" if r in lists["test"] else "train" for r in rel]
    )


def _silence(
    root: Path, n: int, span: tuple[float, float], spec: MfccSpec, rng: np.random.Generator
) -> list[_Clip]:
    files = sorted((root / _NOISE).glob("*.wav"))
    if not files:
        return [_Clip(path=None) for _ in range(n)]  # no noise recordings: digital silence
    from scipy.io import wavfile

    lengths = [wavfile.read(f, mmap=True)[1].shape[0] for f in files]
    clips = []
    for _ in range(n):
        k = int(rng.integers(len(files)))
        lo, hi = (int(span[0] * lengths[k]), int(span[1] * lengths[k]))
        clips.append(
            _Clip(
                path=None,
                noise=k,
                start=int(rng.integers(lo, max(lo, hi - spec.clip_samples) + 1)),
                volume=float(rng.uniform()),
            )
        )
    return clips


def _word(value: object) -> str:
    if not isinstance(value, str):
        raise DataError(
            f"data.words contains {value!r}, not a word (YAML reads bare yes/no/on/off as "
            'booleans); quote them: data.words=["yes","no",...]'
        )
    return value


def _mfcc_spec(g: Group) -> MfccSpec:
    g.check_keys(f.name for f in fields(MfccSpec))
    d = MfccSpec()
    ints = {"sample_rate", "n_fft", "n_mels", "n_mfcc"}
    return MfccSpec(**{f.name: (g.integer(f.name, getattr(d, f.name), low=1) if f.name in ints
                                else g.number(f.name, getattr(d, f.name), low=0.0))
                       for f in fields(MfccSpec)})


@dataclass(frozen=True, kw_only=True)
class SpeechCommandsOptions(LoaderOptions):
    """``conf/data/speech_commands.yaml``'s own keys (MLPerf Tiny KWS conventions)."""

    words: tuple[str, ...] = WORDS
    unknown_percentage: float = 10.0  # other words, as % of the known-word clips per partition
    silence_percentage: float = 10.0  # 1 s background-noise crops, same convention
    official_splits: bool = True  # keep validation_list.txt / testing_list.txt
    features: MfccSpec = field(default_factory=MfccSpec)  # the front end: 1 x 49 x 10 MFCC

    @classmethod
    def from_group(cls, g: Group) -> SpeechCommandsOptions:
        d = cls()
        raw = g.values.get("words")
        if raw is not None and (isinstance(raw, str) or not isinstance(raw, (list, tuple))):
            raise DataError(f"data.words={raw!r} is not a list of words; set "
                            'data.words=["yes","no",...]')
        return cls(words=tuple(_word(w) for w in raw or d.words),
                   unknown_percentage=g.number("unknown_percentage", d.unknown_percentage,
                                               low=0.0),
                   silence_percentage=g.number("silence_percentage", d.silence_percentage,
                                               low=0.0),
                   official_splits=g.flag("official_splits", d.official_splits),
                   features=_mfcc_spec(g.sub("features")))


def _pool_clips(
    root: Path, opts: SpeechCommandsOptions, seed: int
) -> tuple[list[_Clip], np.ndarray, np.ndarray | None]:
    words, spec = opts.words, opts.features
    rel = sorted(
        f"{d.name}/{f.name}"
        for d in root.iterdir()
        if d.is_dir() and not d.name.startswith("_")
        for f in d.glob("*.wav")
    )
    if not rel:
        raise missing_data(root, "Speech Commands word folders (<root>/<word>/*.wav)")
    groups = _partition(root, rel, opts.official_splits)
    known = np.array([r.split("/")[0] in words for r in rel])
    labels = np.array(
        [words.index(r.split("/")[0]) if k else len(words) for r, k in zip(rel, known, strict=True)]
    )
    rng = np.random.default_rng(seed)
    keep, clips_out, labels_out, groups_out = [], [], [], []
    for part in ("train", "val", "test") if groups is not None else ("train",):
        in_part = np.ones(len(rel), bool) if groups is None else groups == part
        n_known = int((in_part & known).sum())
        unknown = np.flatnonzero(in_part & ~known)
        n_unknown = min(
            len(unknown), math.ceil(n_known * opts.unknown_percentage / 100)
        )
        chosen = np.sort(
            np.concatenate(
                [np.flatnonzero(in_part & known), rng.choice(unknown, n_unknown, replace=False)]
            )
        )
        keep.append(chosen)
        n_silence = math.ceil(n_known * opts.silence_percentage / 100)
        span = (0.0, 1.0) if groups is None else _NOISE_SPANS[part]
        clips_out += [_Clip(path=root / rel[i]) for i in chosen] + _silence(
            root, n_silence, span, spec, rng
        )
        labels_out += [*labels[chosen], *([len(words) + 1] * n_silence)]
        groups_out += [part] * (len(chosen) + n_silence)
    return (
        clips_out,
        np.asarray(labels_out, dtype=np.int64),
        None if groups is None else np.array(groups_out),
    )


def _reader(root: Path, clips: list[_Clip], spec: MfccSpec) -> Any:
    noise_files = sorted((root / _NOISE).glob("*.wav"))

    def read(idx: np.ndarray) -> torch.Tensor:
        noises: dict[int, np.ndarray] = {}
        out = []
        for start in tqdm(
            range(0, len(idx), 1024),
            desc="speech commands MFCC",
            disable=len(idx) < 4096,
            leave=False,
        ):
            waves = []
            for i in idx[start : start + 1024]:
                c = clips[int(i)]
                if c.path is not None:
                    waves.append(_fit(_read_wav(c.path, spec), spec.clip_samples))
                elif c.noise < 0:
                    waves.append(np.zeros(spec.clip_samples, np.float32))
                else:
                    if c.noise not in noises:
                        noises[c.noise] = _read_wav(noise_files[c.noise], spec)
                    waves.append(_fit(noises[c.noise][c.start :], spec.clip_samples) * c.volume)
            out.append(mfcc(torch.from_numpy(np.stack(waves)), spec))
        return torch.cat(out).unsqueeze(1)

    return read


def load(data: DataSettings, *, seed: int) -> Pool:
    """Clips of every word folder under ``data.root``; features (N, 1, frames, n_mfcc) on demand."""
    opts = data.options
    assert isinstance(opts, SpeechCommandsOptions), "DataSettings picks the loader's options"
    root = data.folder()
    if not root.is_dir() and data.download:
        download(root)
    if not root.is_dir():
        raise missing_data(root, "Speech Commands folder")
    clips, labels, groups = _pool_clips(root, opts, seed)
    return Pool(
        labels=labels,
        class_names=(*opts.words, "_unknown_", "_silence_"),
        read=_reader(root, clips, opts.features),
        groups=groups,
        fit_norm=True,
        fit_dims=(0, 1),
    )
