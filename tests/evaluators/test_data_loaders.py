"""Every real loader on small files written in the dataset's own on-disk format (no download)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from evaluators.data import DataError, DataSettings, DataSplits, load_data
from evaluators.data._audio import MfccSpec, mel_filterbank, mfcc

SR = 16000


def _load(cfg: dict[str, Any], *, seed: int) -> DataSplits:
    """``load_data`` on a ``data`` mapping, parsed as the entry points parse it."""
    return load_data(DataSettings.from_mapping(cfg), seed=seed)


def _write_cifar(root: Path, per_batch: int = 10) -> np.ndarray:
    """cifar-10-batches-py with five train batches, a test batch and batches.meta, as pickles."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    all_data = []
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(per_batch)]
        with (folder / name).open("wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data, "filenames": []}, f)
        all_data.append(data)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": names, "num_vis": 3072, "num_cases_per_batch": per_batch}, f)
    return np.concatenate(all_data)


def test_cifar10_reads_all_six_batches(tmp_path: Path) -> None:
    raw = _write_cifar(tmp_path)
    cfg = {"name": "cifar10", "loader": "cifar10", "root": str(tmp_path), "num_classes": 10,
           "splits": {"train": 40, "val": 10, "test": 10}}  # fmt: skip
    data = _load(cfg, seed=0)
    assert data.input_shape == (3, 32, 32) and data.class_names[0] == "airplane"
    assert len(data.train) + len(data.val) + len(data.test) == 60  # the test batch is in the pool
    x, _ = data.test[0]
    pixels = torch.from_numpy(raw.reshape(-1, 3, 32, 32)).float() / 255
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    assert any(torch.allclose(x, (p - mean) / std, atol=1e-5) for p in pixels)


def test_missing_dataset_names_path_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for loader in ("cifar10", "speech_commands", "mitbih"):
        with pytest.raises(DataError) as err:
            _load({"loader": loader, "root": str(missing), "download": False}, seed=0)
        message = str(err.value)
        assert "\n" not in message and str(missing) in message
        assert "data.root=" in message and "data.download=true" in message


def _tone(freq: float, seconds: float = 1.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _write_speech_commands(root: Path) -> dict[str, list[str]]:
    """<root>/<word>/<speaker>_nohash_<n>.wav, _background_noise_, validation/testing lists."""
    lists: dict[str, list[str]] = {"val": [], "test": []}
    words = {"yes": 300.0, "no": 600.0, "bed": 900.0, "cat": 1200.0}
    for w, (word, freq) in enumerate(words.items()):
        (root / word).mkdir(parents=True)
        for speaker in range(10):
            rel = f"{word}/{speaker:08x}_nohash_0.wav"
            wavfile.write(
                root / rel, SR, _tone(freq + 10 * speaker, seconds=0.8 if w == 1 else 1.0)
            )
            if speaker == 8:
                lists["val"].append(rel)
            elif speaker == 9:
                lists["test"].append(rel)
    (root / "validation_list.txt").write_text("\n".join(lists["val"]) + "\n")
    (root / "testing_list.txt").write_text("\n".join(lists["test"]) + "\n")
    (root / "_background_noise_").mkdir()
    noise = np.random.default_rng(0).normal(0, 3000, SR * 12).astype(np.int16)
    wavfile.write(root / "_background_noise_" / "white_noise.wav", SR, noise)
    return lists


def test_speech_commands_twelve_class_layout(tmp_path: Path) -> None:
    _write_speech_commands(tmp_path)
    cfg = {"name": "kws", "loader": "speech_commands", "root": str(tmp_path),
           "words": ["yes", "no"],
           "unknown_percentage": 50, "silence_percentage": 50,
           "splits": {"train": None, "val": None, "test": None}}  # fmt: skip
    data = _load(cfg, seed=0)
    assert data.class_names == ("yes", "no", "_unknown_", "_silence_")
    assert data.input_shape == (1, 49, 10)
    # val: 2 known clips (yes, no) + ceil(50 % of 2) unknown + ceil(50 % of 2) silence
    assert len(data.val) == 4 and len(data.test) == 4
    assert len(data.train) == 16 + 8 + 8  # 8 speakers x 2 words, 8 of 16 unknown clips, 8 silence
    _, y_val = data.val.tensors()  # type: ignore[attr-defined]
    assert sorted(y_val.tolist()) == [0, 1, 2, 3]
    x_train, _ = data.train.tensors()  # type: ignore[attr-defined]
    # features are standardised per coefficient with train statistics
    assert torch.allclose(x_train.mean(dim=(0, 1, 2)), torch.zeros(10), atol=1e-4)
    again = _load(cfg, seed=0)
    assert again.fingerprint == data.fingerprint


def test_speech_commands_needs_split_lists(tmp_path: Path) -> None:
    _write_speech_commands(tmp_path)
    (tmp_path / "testing_list.txt").unlink()
    with pytest.raises(DataError, match=r"testing_list\.txt"):
        _load({"loader": "speech_commands", "root": str(tmp_path)}, seed=0)


def test_mfcc_front_end_matches_mlperf_shape_and_sees_pitch() -> None:
    spec = MfccSpec()
    low = torch.from_numpy(_tone(300.0).astype(np.float32) / 32768)
    high = torch.from_numpy(_tone(3000.0).astype(np.float32) / 32768)
    feats = mfcc(torch.stack([low, high]), spec)
    assert feats.shape == (2, 49, 10)
    bank = mel_filterbank(spec)
    bin_of = lambda hz: round(hz / (SR / 2) * (spec.n_fft // 2))  # noqa: E731
    assert int(bank[bin_of(300.0)].argmax()) < int(bank[bin_of(3000.0)].argmax())
    assert not torch.allclose(feats[0], feats[1])


def _write_mitbih(root: Path) -> dict[str, int]:
    """Two WFDB records (.hea/.dat) with beat annotations (.atr), written by wfdb itself."""
    import wfdb

    counts = {"N": 0, "S": 0, "V": 0, "F": 0, "Q": 0}
    aami = {"N": "N", "L": "N", "A": "S", "V": "V", "F": "F", "/": "Q"}
    for record, symbols in (("100", "NNLNANVNNF"), ("101", "NV/NNANNFN")):
        fs, n = 360, 360 * 12
        signal = np.zeros((n, 2))
        peaks = np.arange(1, len(symbols) + 1) * 380
        for p in peaks:
            signal[p - 5 : p + 6, 0] = np.hanning(11) * 1.5
        signal[:, 1] = 0.1 * np.sin(np.arange(n) / 50)
        wfdb.wrsamp(record, fs=fs, units=["mV", "mV"], sig_name=["MLII", "V5"], p_signal=signal,
                    fmt=["212", "212"], write_dir=str(root))  # fmt: skip
        # a rhythm annotation (+) that is not a beat must be skipped
        samples = np.concatenate([[10], peaks])
        wfdb.wrann(record, "atr", samples, symbol=["+", *symbols], write_dir=str(root))
        for s in symbols:
            counts[aami[s]] += 1
    return counts


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # pandas deprecations inside wfdb
def test_mitbih_beats_in_aami_classes(tmp_path: Path) -> None:
    counts = _write_mitbih(tmp_path)
    cfg = {"name": "mitbih", "loader": "mitbih", "root": str(tmp_path), "window": 187, "before": 90,
           "splits": {"train": 12, "val": 4, "test": None}}  # fmt: skip
    data = _load(cfg, seed=0)
    assert data.class_names == ("N", "S", "V", "F", "Q") and data.input_shape == (1, 187)
    labels = np.concatenate([d.tensors()[1].numpy() for d in (data.train, data.val, data.test)])  # type: ignore[attr-defined]
    assert np.bincount(labels, minlength=5).tolist() == list(counts.values())
    x, _ = data.train.tensors()  # type: ignore[attr-defined]
    assert (x[:, 0].argmax(dim=1) == 90).all()  # the R peak sits `before` samples into the window
    assert torch.allclose(x.mean(dim=2), torch.zeros(len(x), 1), atol=1e-5)  # per-beat standardised


def test_npz_loader(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    x = np.random.default_rng(0).normal(size=(40, 2, 16)).astype(np.float32)
    np.savez(path, x=x, y=np.arange(40) % 4, class_names=np.array(["a", "b", "c", "d"]))
    data = _load({"name": "mine", "loader": "npz", "path": str(path),
                      "splits": {"train": 20, "val": 8, "test": 8}}, seed=0)  # fmt: skip
    assert (
        data.input_shape == (2, 16)
        and data.num_classes == 4
        and data.class_names == ("a", "b", "c", "d")
    )
    xs, ys = data.train.tensors()  # type: ignore[attr-defined]
    assert all(
        any(np.array_equal(row, ref) for ref in x[np.arange(40) % 4 == lab])
        for row, lab in zip(xs.numpy(), ys.numpy(), strict=True)
    )
    np.savez(path, x=x)
    with pytest.raises(DataError, match="has no array 'y'"):
        _load({"loader": "npz", "path": str(path)}, seed=0)
    with pytest.raises(DataError, match=r"data\.path="):
        _load({"loader": "npz", "path": "???"}, seed=0)


def test_generic_loader_instantiates_target() -> None:
    dataset = {"_target_": "torchvision.datasets.FakeData", "size": 45,
               "image_size": [1, 8, 8], "num_classes": 3,
               "transform": {"_target_": "torchvision.transforms.ToTensor"}}  # fmt: skip
    cfg = {"name": "fake", "loader": "generic", "num_classes": 3, "dataset": dataset,
           "splits": {"train": 25, "val": 10, "test": 10}}  # fmt: skip
    data = _load(cfg, seed=0)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 3 and len(data.test) == 10
    with pytest.raises(DataError, match=r"data\.dataset\._target_"):
        _load({"loader": "generic", "dataset": {"_target_": "???"}}, seed=0)


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # pandas deprecations inside wfdb
def test_mitbih_inter_patient_protocol_keeps_patients_apart(tmp_path: Path) -> None:
    from evaluators.data._mitbih import DS1, DS2
    from evaluators.data._mitbih import load as mitbih_load
    from tests.search._datasets import write_mitbih

    beats = 10
    write_mitbih(tmp_path, records=(*DS1, *DS2, "102"), beats=beats)  # 102 is paced: unused
    cfg = {"name": "mitbih", "loader": "mitbih", "root": str(tmp_path),
           "protocol": "inter_patient",
           "splits": {"train": beats * len(DS1) - 20, "val": None, "test": None}}
    data = _load(cfg, seed=0)
    # train and val share the DS1 beats, test takes every DS2 beat and nothing else
    assert (len(data.train), len(data.val), len(data.test)) == (
        beats * len(DS1) - 20, 20, beats * len(DS2))
    # by content: the beats of the DS2 records (noise differs per record) are exactly test's
    pool = mitbih_load(DataSettings.from_mapping(
        {"loader": "mitbih", "root": str(tmp_path), "records": list(DS2)}), seed=0)
    ds2 = {row.numpy().tobytes() for row in pool.read(np.arange(len(pool.labels)))}

    def rows(split: Any) -> set[bytes]:
        return {row.numpy().tobytes() for row in split.tensors()[0]}

    assert rows(data.test) == ds2 and not (rows(data.train) | rows(data.val)) & ds2
    held = {**cfg, "val_records": ["118", "208"], "splits": {"train": None, "val": None,
                                                              "test": None}}
    data = _load(held, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (
        beats * (len(DS1) - 2), beats * 2, beats * len(DS2))
    for bad, match in (({"protocol": "leave_one_out"}, "data.protocol='leave_one_out'"),
                       ({"records": ["100"]}, "data.records and data.protocol=inter_patient"),
                       ({"val_records": ["100"]}, r"data.val_records=\['100'\] are not DS1"),
                       ({"protocol": "intra_patient", "val_records": ["118"]},
                        "needs data.protocol=inter_patient")):
        with pytest.raises(DataError, match=match):
            _load({**cfg, **bad}, seed=0)
    (tmp_path / "234.hea").unlink()
    with pytest.raises(DataError, match=r"234\.hea"):
        _load(cfg, seed=0)


def test_cifar10_decode_equals_torchvisions_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pickles decoded straight to uint8 (N, 3, 32, 32) and normalised in batches give what
    torchvision's CIFAR10 with ToTensor + Normalize gives, sample by sample."""
    from torchvision import transforms
    from torchvision.datasets import CIFAR10, cifar

    from evaluators.data._cifar10 import _MEAN, _STD, load
    from evaluators.data._pool import ArrayDataset

    _write_cifar(tmp_path, per_batch=12)
    # our fixture pickles are not the official files: skip torchvision's MD5 checks only
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(_MEAN, _STD)])
    ref = [CIFAR10(str(tmp_path), train=t, transform=transform) for t in (True, False)]
    pool = load(DataSettings.from_mapping({"loader": "cifar10", "root": str(tmp_path)}), seed=0)
    n = len(pool.labels)
    assert n == len(ref[0]) + len(ref[1]) == 72
    raw = pool.read(np.arange(n))
    assert raw.dtype == torch.uint8 and raw.shape == (n, 3, 32, 32)
    want_raw = np.concatenate([d.data for d in ref]).transpose(0, 3, 1, 2)  # HWC -> CHW
    np.testing.assert_array_equal(raw.numpy(), want_raw)
    np.testing.assert_array_equal(pool.labels, np.concatenate([d.targets for d in ref]))
    ds = ArrayDataset(
        raw,
        torch.as_tensor(pool.labels),
        scale=pool.scale,
        mean=torch.tensor(pool.mean).view(3, 1, 1),
        std=torch.tensor(pool.std).view(3, 1, 1),
    )
    ours = ds.tensors()[0]
    theirs = torch.stack([ref[i >= 60][i % 60][0] for i in range(n)])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)
