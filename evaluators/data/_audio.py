"""MFCC features without torchaudio: torch.stft, a triangular mel filterbank and an orthonormal DCT.

Defaults follow the MLPerf Tiny keyword-spotting front end: 16 kHz, 30 ms Hann window, 20 ms
stride (49 frames per second of audio, no centring), magnitude spectrum, 40 mel bands from
20 Hz to 4 kHz, log(mel + 1e-6), first 10 DCT-II coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["MfccSpec", "mel_filterbank", "mfcc"]


@dataclass(frozen=True, kw_only=True)
class MfccSpec:
    """Front-end settings (``data.features`` in ``conf/data/speech_commands.yaml``)."""

    sample_rate: int = 16000
    clip_s: float = 1.0
    window_ms: float = 30.0
    stride_ms: float = 20.0
    n_fft: int = 512
    n_mels: int = 40
    n_mfcc: int = 10
    f_min: float = 20.0
    f_max: float = 4000.0

    @property
    def clip_samples(self) -> int:
        return round(self.sample_rate * self.clip_s)

    @property
    def window(self) -> int:
        return round(self.sample_rate * self.window_ms / 1000)

    @property
    def hop(self) -> int:
        return round(self.sample_rate * self.stride_ms / 1000)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(spec: MfccSpec) -> torch.Tensor:
    """HTK-style triangular filters, shape (n_fft // 2 + 1, n_mels), unit peak height."""
    freqs = np.linspace(0.0, spec.sample_rate / 2, spec.n_fft // 2 + 1)
    edges = _mel_to_hz(
        np.linspace(
            _hz_to_mel(np.array(spec.f_min)), _hz_to_mel(np.array(spec.f_max)), spec.n_mels + 2
        )
    )
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower) / (centre - lower)
    falling = (upper - freqs[:, None]) / (upper - centre)
    return torch.from_numpy(np.clip(np.minimum(rising, falling), 0.0, None)).to(torch.float32)


def mfcc(waves: torch.Tensor, spec: MfccSpec) -> torch.Tensor:
    """MFCCs of a batch of clips (B, samples) -> (B, frames, n_mfcc)."""
    if spec.window > spec.n_fft:
        raise ValueError(
            f"data.features.n_fft={spec.n_fft} is shorter than the {spec.window}-sample window; "
            "raise it"
        )
    stft = torch.stft(
        waves.to(torch.float32),
        n_fft=spec.n_fft,
        hop_length=spec.hop,
        win_length=spec.window,
        window=torch.hann_window(spec.window),
        center=False,
        return_complex=True,
    )
    from scipy.fft import dct  # here, not at the top: the settings import this module's spec

    mel = stft.abs().transpose(1, 2) @ mel_filterbank(spec)
    basis = torch.from_numpy(
        dct(np.eye(spec.n_mels), type=2, norm="ortho", axis=1)[:, : spec.n_mfcc]
    )
    return torch.log(mel + 1e-6) @ basis.to(torch.float32)
