"""Test fixtures: tiny datasets written in each real on-disk format, read by the real loaders.

Every writer puts a small, seeded, learnable (class-dependent) dataset where the matching
``conf/data/<name>.yaml`` expects it under ``data.root``: CIFAR-10 python pickles, the Speech
Commands v2 folder layout with 16-bit WAV clips and split lists, and WFDB records with ``atr``
annotations. Sizes are chosen so the tiny mode (``+debug=tiny``) can draw
its splits (train 40 / val 20 / test 20).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.io import wavfile

__all__ = ["DATASETS", "RUN_FILES", "search_cli", "shared_cache", "write_cifar10", "write_dataset",
           "write_mitbih", "write_speech_commands"]

_CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"]
_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


def write_cifar10(root: Path, *, per_batch: int = 24, seed: int = 0) -> Path:
    """Five train batches, a test batch and batches.meta in ``root/cifar-10-batches-py``."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    colours = rng.integers(0, 256, size=(10, 3))
    for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"):
        labels = np.arange(per_batch) % 10
        base = colours[labels][:, :, None, None] * np.ones((1, 1, 32, 32))
        noise = rng.normal(0, 40, size=(per_batch, 3, 32, 32))
        images = np.clip(base + noise, 0, 255).astype(np.uint8).reshape(per_batch, 3072)
        batch = {"batch_label": name, "labels": labels.tolist(), "data": images,
                 "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh)
    with (folder / "batches.meta").open("wb") as fh:
        pickle.dump({"label_names": _CIFAR_NAMES, "num_cases_per_batch": per_batch,
                     "num_vis": 3072}, fh)
    return Path(root)


def _tone(freq: float, rng: np.random.Generator, n: int = 16000) -> np.ndarray:
    t = np.arange(n) / 16000.0
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.normal(size=n)
    return (wave * 32767).astype(np.int16)


def write_speech_commands(root: Path, *, per_split: tuple[int, int, int] = (6, 3, 3),
                          seed: int = 0) -> Path:
    """<root>/<word>/<speaker>_nohash_<n>.wav for 10 words + 2 unknown, noise, split lists."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    val, test = [], []
    for w, word in enumerate((*_WORDS, "bed", "cat")):
        (root / word).mkdir(parents=True, exist_ok=True)
        n_train, n_val, n_test = per_split
        for i in range(n_train + n_val + n_test):
            rel = f"{word}/{w:02d}{i:06x}_nohash_0.wav"
            # short clips (0.8 s) exercise the loader's zero padding to 1 s
            n = 12800 + 3200 * (i % 2)
            wavfile.write(root / rel, 16000, _tone(200.0 + 150.0 * w, rng, n=n))
            if n_train <= i < n_train + n_val:
                val.append(rel)
            elif i >= n_train + n_val:
                test.append(rel)
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    (root / "_background_noise_").mkdir(exist_ok=True)
    noise = (0.1 * rng.normal(size=16000 * 12) * 32767).astype(np.int16)
    wavfile.write(root / "_background_noise_" / "white_noise.wav", 16000, noise)
    return root


_AAMI_SYMBOLS = ("N", "A", "V", "F", "Q")


def write_mitbih(root: Path, *, records: tuple[str, ...] = ("100", "101"), beats: int = 70,
                 seed: int = 0) -> Path:
    """WFDB records (<record>.hea/.dat, 2 leads, 360 Hz) with beat annotations (<record>.atr)."""
    import wfdb

    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    spacing = 220
    t = np.arange(187)
    for r, name in enumerate(records):
        n = spacing * (beats + 2)
        signal = 0.02 * rng.normal(size=(n, 2))
        peaks = spacing * (1 + np.arange(beats))
        symbols = [_AAMI_SYMBOLS[(i + r) % 5] for i in range(beats)]
        for peak, sym in zip(peaks, symbols, strict=True):
            k = _AAMI_SYMBOLS.index(sym)
            width = 3.0 + 4.0 * k  # a class-dependent QRS width and T wave
            shape = np.exp(-0.5 * ((t - 90) / width) ** 2) + 0.2 * k * np.exp(
                -0.5 * ((t - 140) / 10.0) ** 2)
            signal[peak - 90:peak + 97, 0] += shape
            signal[peak - 90:peak + 97, 1] += 0.5 * shape
        wfdb.wrsamp(name, fs=360, units=["mV", "mV"], sig_name=["MLII", "V1"],
                    p_signal=signal, fmt=["212", "212"], adc_gain=[200.0, 200.0],
                    baseline=[1024, 1024], write_dir=str(root))
        wfdb.wrann(name, "atr", np.asarray(peaks, dtype=np.int64), symbol=symbols,
                   write_dir=str(root))
    return root


DATASETS = {"cifar10": write_cifar10, "speech_commands": write_speech_commands,
            "mitbih": write_mitbih}


def write_dataset(name: str, root: Path) -> Path:
    """Write the tiny dataset ``name`` (a key of :data:`DATASETS`) under ``root``."""
    return DATASETS[name](root)


# --- running the command line in tiny mode -------------------------------------------------

RUN_FILES = ("config.yaml", "trials.parquet", "pareto.csv", "chosen.yaml", "summary.json",
             "report.html")


def shared_cache(tmp_path_factory: Any) -> Path:
    """One cache folder for the whole pytest session, so tiny runs reuse backbones and features."""
    path = Path(tmp_path_factory.getbasetemp()) / "eenn-shared-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def search_cli(args: list[str], *, cwd: Path, cache: Path, module: str = "search",
               timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args>`` in ``cwd`` with ``cache`` as the cache folder."""
    env = {**os.environ, "EENN_CACHE_DIR": str(cache), "HYDRA_FULL_ERROR": "0"}
    env.pop("EENN_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", module, *args, f"cache_dir={cache}"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)
