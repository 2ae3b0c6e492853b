"""An exported EENN in onnxruntime, timed like :mod:`search.deploy._latency` times torch.

:class:`OnnxEENN` exports an EENN (:func:`search.deploy.export.export_eenn`), loads the
manifest's sessions once on one pinned intra-op thread (:class:`ManifestRunner`) and times its
stage loop at batch 1 (chunks of about ``target_s``, the median of ``repeats`` per chunk,
summed), so that the onnxruntime profile's prediction can be held against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import numpy as np
from numpy.typing import NDArray
from torch import Tensor

from evaluators.costs import BackboneCosts
from evaluators.platform import Platform
from search.deploy._onnx_runner import ManifestRunner
from search.deploy._profile_kit import CLOCKS
from search.deploy.export import export_eenn
from search.deploy.runtime import EENN
from spaces.candidates import ExitCandidate

__all__ = ["OnnxEENN"]


@dataclass(frozen=True, kw_only=True, eq=False)
class OnnxEENN:
    """A loaded ONNX export of one EENN and its exits as ``(candidate, head)`` pieces."""

    runner: ManifestRunner
    exit_pieces: tuple[tuple[int, int], ...]

    @classmethod
    def export(cls, eenn: EENN, *, out: Path, example: Tensor, platform: Platform,
               costs: BackboneCosts, candidates: Sequence[ExitCandidate],
               threads: int = 1) -> OnnxEENN:
        result = export_eenn(eenn, out_dir=out, example=example, platform=platform, costs=costs,
                             candidates=candidates)
        return cls(runner=ManifestRunner(result.manifest_path, threads=threads),
                   exit_pieces=tuple((e.candidate, e.head) for e in eenn.config.exits))

    def exits(self, x: NDArray[np.float32]) -> NDArray[np.int64]:
        """The exit every sample of ``x`` takes."""
        return self.runner.run(x).exit

    def latency(self, x: NDArray[np.float32], *, repeats: int, clock: str = "wall",
                target_s: float = 2e-3) -> float:
        """Per-sample seconds at batch 1 over ``x``."""
        now = CLOCKS[clock]

        def singles(part: NDArray[np.float32]) -> float:
            start = now()
            for i in range(len(part)):
                self.runner.run(part[i:i + 1], batch_size=1)
            return now() - start

        per = singles(x) / len(x)  # warm-up, and the chunk size
        size = max(1, int(target_s / max(per, 1e-7)))
        total = sum(median(singles(x[i:i + size]) for _ in range(repeats))
                    for i in range(0, len(x), size))
        return float(total) / len(x)
