"""An exported EENN in onnxruntime, timed like :mod:`search.deploy._latency` times torch.

:class:`OnnxEENN` exports an EENN (:func:`search.deploy.export.export_eenn`), loads the
manifest's sessions once on one pinned intra-op thread (:class:`ManifestRunner`) and times its
stage loop at batch 1 (chunks of about ``target_s``, the median of ``repeats`` per chunk,
summed) and in a pooled throughput loop (:meth:`OnnxEENN.pooled`: the reference runner's
stages and decision, with the survivors of an exit waiting for a full batch at the next stage,
as :meth:`search.deploy.runtime.EENN.run_pooled` does in torch), so that the onnxruntime
profile's prediction can be held against it.
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
from search.deploy._onnx_runner import ManifestRunner, numpy_scores
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

    def pooled(self, x: NDArray[np.float32], *, batch: int) -> None:
        """One pooled pass over ``x``: every stage runs on full batches of survivors."""
        manifest, sessions = self.runner.manifest, self.runner.sessions
        stages, metric = manifest["stages"], manifest["decision"]["metric"]
        waiting: list[list[NDArray[np.float32]]] = [[] for _ in stages]

        def drain(i: int, flush: bool) -> None:
            while waiting[i]:
                count = sum(len(a) for a in waiting[i])
                if count < batch and not flush:
                    return
                h = np.concatenate(waiting[i]) if len(waiting[i]) > 1 else waiting[i][0]
                waiting[i] = [h[batch:]] if count > batch else []
                stage = stages[i]
                got = sessions[i].run(stage["outputs"], {stage["input"]["name"]: h[:batch]})
                outs = dict(zip(stage["outputs"], got, strict=True))
                act = outs.get(stage["activation"]) if stage["activation"] else None
                if stage["logits"] is not None and not stage["final"]:
                    _, conf = numpy_scores(outs[stage["logits"]], metric)
                    keep = conf < np.float32(stage["exit"]["threshold"])
                    act = np.ascontiguousarray(act[keep]) if act is not None else None
                if act is not None and len(act):
                    waiting[i + 1].append(act)

        for lo in range(0, len(x), batch):
            waiting[0].append(np.ascontiguousarray(x[lo:lo + batch]))
            for i in range(len(stages)):
                drain(i, flush=False)
        for i in range(len(stages)):
            drain(i, flush=True)

    def latency_pooled(self, x: NDArray[np.float32], *, batch: int, repeats: int,
                       clock: str = "wall") -> float:
        """Per-sample seconds of :meth:`pooled` over ``x``, the median of ``repeats`` passes."""
        now = CLOCKS[clock]
        self.pooled(x, batch=batch)  # warm-up

        def one() -> float:
            start = now()
            self.pooled(x, batch=batch)
            return now() - start

        return float(median(one() for _ in range(repeats))) / len(x)
