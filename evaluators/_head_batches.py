"""What one step of head training computes on: the train inputs and the stacked heads.

:class:`_Inputs` serves normalised train features of chosen samples per group of
same-shaped candidates, from a copy on the training device when it fits (one upload
through pinned buffers) or gathered from the memory-mapped cache per step.
:class:`_Stack` runs the heads of one kind at such a group as a few batched matrix
products (:func:`_stacked_forward`), a lone head as its own module.
:mod:`evaluators.head_training` drives the epochs, early stopping and the cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor

from evaluators.features import FeatureStore
from evaluators.heads import ExitHead, HeadSpec

_EVAL_CHUNK = 4096  # samples per held-out or statistics chunk
_CPU_RESIDENT_BYTES = 2 * 2**30  # train features held in memory (not gathered per step) below this
_GPU_RESIDENT_SHARE = 0.5  # ... or below this share of the GPU's free memory
_STACKED_KINDS = frozenset({"linear", "mlp", "conv"})  # kinds _stacked_forward knows


def _resident(nbytes: int, device: torch.device) -> bool:
    """Whether ``nbytes`` of train features are copied to ``device`` once (not per step)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= _GPU_RESIDENT_SHARE * free
    return nbytes <= _CPU_RESIDENT_BYTES


def _to_device(arrays: Sequence[NDArray[Any]], device: torch.device) -> Tensor:
    """``(G, N, ...)`` fp16 stack of same-shaped arrays on ``device``, copied in chunks of rows.

    On a GPU each chunk goes through one of two pinned buffers: one host copy out of the
    memory map, then a copy to the device that overlaps the next chunk's host copy.
    """
    out = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.float16, device=device)
    rows = max(1, (64 * 2**20) // max(1, arrays[0][:1].nbytes))
    pinned = device.type == "cuda"
    buffers = [
        torch.empty((rows, *arrays[0].shape[1:]), dtype=torch.float16, pin_memory=pinned)
        for _ in range(2 if pinned else 1)
    ]
    done: list[Any] = [None] * len(buffers)
    chunks = [(g, start) for g, arr in enumerate(arrays) for start in range(0, len(arr), rows)]
    for k, (g, start) in enumerate(chunks):
        slot = k % len(buffers)
        if done[slot] is not None:
            done[slot].synchronize()  # its last copy to the device has finished
        rows_here = min(rows, len(arrays[g]) - start)
        host = buffers[slot][:rows_here]
        np.copyto(host.numpy(), arrays[g][start : start + rows_here], casting="same_kind")
        out[g, start : start + rows_here].copy_(host, non_blocking=pinned)
        if pinned:
            done[slot] = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done[slot].record()
    return out


class _Inputs:
    """Normalised float32 train features of chosen samples, ``(G, n, ...)`` per shape group.

    Per-channel mean and std come from the fitted part of train (float64 sums). With the
    features resident on the device a step gathers rows there; otherwise it gathers them
    from the memory maps and copies the batch over.
    """

    def __init__(
        self,
        store: FeatureStore,
        groups: Sequence[tuple[int, ...]],
        fit: NDArray[np.int64],
        device: torch.device,
    ) -> None:
        self.device = device
        self.arrays = [[store.features("train", store.points[c]) for c in g] for g in groups]
        nbytes = sum(a.nbytes for g in self.arrays for a in g)
        self.data: list[Tensor] | None = None
        if _resident(nbytes, device):
            self.data = [_to_device(g, device) for g in self.arrays]
        self.mean: list[Tensor] = []
        self.std: list[Tensor] = []
        fit_t = torch.from_numpy(fit).to(device)
        for i in range(len(groups)):
            mean, std = self._channel_stats(i, fit, fit_t)
            view = (mean.shape[0], 1, mean.shape[1]) + (1,) * (len(self.arrays[i][0].shape) - 2)
            self.mean.append(mean.view(view))
            self.std.append(std.view(view))

    def _rows(self, group: int, idx: NDArray[np.int64], idx_t: Tensor) -> Tensor:
        """Raw fp16 rows ``idx`` of each candidate of ``group``: ``(G, n, ...)`` on the device."""
        if self.data is not None:
            return self.data[group].index_select(1, idx_t)
        stacked = np.stack([np.asarray(a[idx]) for a in self.arrays[group]])
        return torch.from_numpy(stacked).to(self.device)

    def _channel_stats(
        self, group: int, fit: NDArray[np.int64], fit_t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per-candidate, per-channel mean and std ``(G, C)`` over samples and positions."""
        sums: Tensor | float = 0.0
        squares: Tensor | float = 0.0
        count = 0
        rows = max(1, _EVAL_CHUNK // len(self.arrays[group]))  # bounded float64 temporaries
        for start in range(0, len(fit), rows):
            end = start + rows
            x = self._rows(group, fit[start:end], fit_t[start:end])
            x = x.double().reshape(x.shape[0], x.shape[1], x.shape[2], -1)  # (G, n, C, positions)
            sums = sums + x.sum(dim=(1, 3))
            squares = squares + (x * x).sum(dim=(1, 3))
            count += x.shape[1] * x.shape[3]
        mean = torch.as_tensor(sums) / count
        std = (torch.as_tensor(squares) / count - mean * mean).clamp_min(0).sqrt()
        return mean.float(), torch.where(std > 1e-6, std, torch.ones_like(std)).float()

    def __call__(self, idx: NDArray[np.int64], idx_t: Tensor | None = None) -> list[Tensor]:
        """Rows ``idx`` of every shape group; ``idx_t`` is ``idx`` already on the device."""
        if idx_t is None:
            idx_t = torch.from_numpy(idx).to(self.device)
        return [
            self._rows(g, idx, idx_t).float().sub_(self.mean[g]).div_(self.std[g])
            for g in range(len(self.arrays))
        ]


def _stacked_forward(spec: HeadSpec, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``(G, n, K)`` outputs of G heads of kind ``spec`` on ``(G, n, C, positions)`` features.

    The forward of :mod:`evaluators.heads` (pooled features in, each ``nn.Linear`` as
    ``x @ W.T + b``), batched over the G heads with one ``baddbmm`` per layer: a handful of
    kernel launches for the whole group, where ``torch.vmap`` costs several times that in
    Python per call. tests/evaluators/test_head_stacking.py checks it against the modules.
    """
    g, n, channels, positions = x.shape

    def linear(name: str, inp: Tensor) -> Tensor:
        weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
        return torch.baddbmm(bias.unsqueeze(1), inp, weight.transpose(1, 2))

    if spec.kind == "linear":
        return linear("fc", x.flatten(2) if spec.flatten else x.mean(dim=3))
    if spec.kind == "mlp":
        return linear("fc2", F.relu(linear("fc1", x.flatten(2))))
    # conv: the same linear map (a 1x1 convolution) at every position, then their mean
    per_position = x.transpose(2, 3).reshape(g, n * positions, channels)
    hidden = F.relu(linear("conv", per_position)).reshape(g, n, positions, -1)
    return linear("fc", hidden.mean(dim=2))


class _Stack:
    """The heads of one group as one forward ``(G, n, ...) -> (G, n, K)`` and its parameters.

    Several heads are stacked (``stack_module_state``) and run by :func:`_stacked_forward`;
    a lone head is called as it is, on its own parameters.
    """

    def __init__(self, modules: Sequence[ExitHead], *, inputs: int) -> None:
        self.inputs = inputs  # which shape group feeds it
        self._module: ExitHead | None = modules[0] if len(modules) == 1 else None
        if self._module is not None:
            self.params = dict(self._module.named_parameters())
            self.buffers = dict(self._module.named_buffers())
            return
        self.params, self.buffers = torch.func.stack_module_state(list(modules))
        head = modules[0]
        self._spec, self._geometry = head.spec, (head.channels, head.positions)

    def __call__(self, x: Tensor) -> Tensor:
        if self._module is not None:
            out: Tensor = self._module(x[0])
            return out.unsqueeze(0)
        return _stacked_forward(self._spec, self.params, x.reshape(*x.shape[:2], *self._geometry))

    def state(self, i: int) -> dict[str, Tensor]:
        """The ``i``-th head's state dict (a copy)."""
        if self._module is not None:
            return {k: v.detach().clone() for k, v in self._module.state_dict().items()}
        return {k: v[i].detach().clone() for k, v in {**self.params, **self.buffers}.items()}
