"""The frozen backbone: a user's checkpoint, or the configured architecture trained once and cached.

A checkpoint (``model.checkpoint``) may be a state dict for ``model.arch``, a TorchScript file
or a ``torch.export`` ``.pt2`` archive. Without one, the architecture is trained with the
``model.train`` recipe and stored under ``<cache_dir>/backbones/`` keyed by a hash of
architecture, kwargs, data fingerprint, recipe and seed, so later runs load it instead.
Accuracies on val and test are cached next to it, keyed by the weights and the data.
"""

from __future__ import annotations

import json
import re
import time
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import fx, nn

from evaluators._cache import atomic_write, ensure_writable
from evaluators._training import BackboneError, TrainRecipe, accuracy, train
from evaluators.data import DataSplits
from evaluators.device import resolve_device
from evaluators.hashing import hash_json, hash_state_dict
from evaluators.models import build_architecture
from evaluators.settings import ModelSettings

__all__ = [
    "BackboneError",
    "BackboneInfo",
    "TrainRecipe",
    "accuracy",
    "get_backbone",
    "load_checkpoint",
    "train",
]

_CACHE_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class BackboneInfo:
    """Where the backbone came from and how good it is."""

    checkpoint: Path
    trained_now: bool
    weights_hash: str


def _archive_kind(path: Path) -> str:
    """'export', 'torchscript' or 'state_dict', from the file's zip layout (or its .pt2 suffix)."""
    if path.suffix == ".pt2":
        return "export"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if any("/code/" in n for n in names):
            return "torchscript"
        if any(
            n.endswith("/models/model.json") or "serialized_exported_program" in n for n in names
        ):
            return "export"
    return "state_dict"


def _unwrap_state(state: Any) -> dict[str, torch.Tensor] | None:
    """The tensor dict inside common layouts: plain, {'state_dict': ...}, DataParallel."""
    if isinstance(state, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(state.get(key), Mapping):
                return _unwrap_state(state[key])
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            if all(str(k).startswith("module.") for k in state):
                return {str(k)[len("module.") :]: v for k, v in state.items()}
            return {str(k): v for k, v in state.items()}
    return None


def _first_mismatch(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> str | None:
    for key, tensor in expected.items():
        if key not in given:
            return f"{key!r} is missing from the checkpoint"
        if tuple(given[key].shape) != tuple(tensor.shape):
            got, want = tuple(given[key].shape), tuple(tensor.shape)
            return f"{key!r} has shape {got}, the architecture expects {want}"
    extra = [k for k in given if k not in expected]
    return f"{extra[0]!r} is not in the architecture" if extra else None


def _load_state_dict(
    path: Path, *, arch: str, num_classes: int, kwargs: Mapping[str, Any]
) -> nn.Module:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise BackboneError(
            f"model.checkpoint={path} is not a loadable state dict ({type(err).__name__}); "
            "save model.state_dict(), torch.jit.save(...) or torch.export.save(...) instead"
        ) from err
    tensors = _unwrap_state(state)
    if tensors is None:
        raise BackboneError(
            f"model.checkpoint={path} holds no state dict of tensors; save model.state_dict() "
            "instead"
        )
    model = build_architecture(arch, num_classes=num_classes, **kwargs)
    problem = _first_mismatch(model.state_dict(), tensors)
    if problem:
        raise BackboneError(
            f"checkpoint {path} does not match arch={arch!r} (kwargs={dict(kwargs)}, "
            f"num_classes={num_classes}): {problem}; "
            "set model.arch/model.kwargs to the architecture it was saved from"
        )
    model.load_state_dict(tensors)
    return model


def load_checkpoint(
    path: Path, *, arch: str, num_classes: int, kwargs: Mapping[str, Any] | None = None
) -> nn.Module:
    """A CPU backbone from a state dict for ``arch``, a TorchScript file or a ``.pt2`` export."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BackboneError(
            f"model.checkpoint={path} does not exist; point it at a checkpoint file or set "
            f"model.checkpoint=null to train {arch}"
        )
    kind = _archive_kind(path)
    try:
        if kind == "export":
            exported = torch.export.load(str(path)).module()
            return fx.GraphModule(exported, exported.graph)  # a plain GraphModule supports .eval()
        if kind == "torchscript":
            with warnings.catch_warnings():  # deprecated upstream, but a format users still have
                warnings.simplefilter("ignore", FutureWarning)
                scripted: nn.Module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
            return scripted
    except Exception as err:  # torch raises many types for corrupt archives
        raise BackboneError(
            f"cannot load {kind} checkpoint {path} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); re-save it"
        ) from err
    return _load_state_dict(path, arch=arch, num_classes=num_classes, kwargs=kwargs or {})


def _check_outputs(model: nn.Module, data: DataSplits, path: Path) -> None:
    """One forward pass on three val samples: the output must be (3, num_classes)."""
    x = torch.stack([data.val[i][0] for i in range(min(3, len(data.val)))])  # type: ignore[arg-type]
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:
        raise BackboneError(
            f"checkpoint {path} fails on a batch of {len(x)} inputs of shape {data.input_shape} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); export it "
            "for this input shape with a dynamic batch dimension"
        ) from err
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), data.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BackboneError(
            f"checkpoint {path} outputs {shape}, expected ({len(x)}, {data.num_classes}) logits "
            f"for {data.name}"
        )


def _cache_key(
    arch: str, kwargs: Mapping[str, Any], data: DataSplits, recipe: TrainRecipe, seed: int
) -> str:
    blob = {
        "version": _CACHE_VERSION,
        "arch": arch,
        "kwargs": dict(kwargs),
        "num_classes": data.num_classes,
        "data": data.fingerprint,
        "recipe": asdict(recipe),
        "seed": seed,
    }
    return hash_json(blob)


def _load_cached(
    path: Path, *, arch: str, num_classes: int, kwargs: Mapping[str, Any]
) -> nn.Module:
    try:
        return _load_state_dict(path, arch=arch, num_classes=num_classes, kwargs=kwargs)
    except BackboneError as err:
        raise BackboneError(
            f"cached backbone {path} is unusable ({err}); delete it to retrain"
        ) from err


def _train_and_cache(
    arch: str,
    kwargs: Mapping[str, Any],
    data: DataSplits,
    recipe: TrainRecipe,
    *,
    seed: int,
    device: torch.device,
    path: Path,
) -> nn.Module:
    n_train = len(data.train)  # type: ignore[arg-type]
    Console(stderr=True).print(
        f"[bold yellow]No checkpoint given (model.checkpoint=null): training {arch} on {data.name} "
        f"({n_train} samples, {recipe.epochs} epochs, {device}).[/] "
        f"It is cached at {path} and reused by later runs; set model.checkpoint=<file> to use your "
        "own weights."
    )
    torch.manual_seed(seed)
    model = build_architecture(arch, num_classes=data.num_classes, **kwargs)
    start = time.perf_counter()
    train(model, data, recipe, seed=seed, device=device, desc=f"training {arch}")
    model.to("cpu")
    atomic_write(path, lambda tmp: torch.save(model.state_dict(), tmp))
    meta = {
        "arch": arch,
        "kwargs": dict(kwargs),
        "data": data.name,
        "data_fingerprint": data.fingerprint,
        "recipe": asdict(recipe),
        "seed": seed,
        "device": str(device),
        "train_seconds": time.perf_counter() - start,
    }
    text = json.dumps(meta, indent=2, default=str)
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(text))
    return model


def get_backbone(
    model: ModelSettings,
    data: DataSplits,
    *,
    cache_dir: Path,
    seed: int,
    device: str = "auto",
) -> tuple[nn.Module, BackboneInfo]:
    """The backbone ``model`` describes, trained on ``data`` if needed; on the CPU in eval mode.

    Loads ``model.checkpoint`` when given; otherwise trains ``model.arch`` with ``model.train``
    (on the GPU when ``device`` resolves to cuda) once and reuses the cached weights afterwards.
    """
    arch, kwargs = model.arch, dict(model.kwargs)
    dev = resolve_device(device)
    directory = Path(cache_dir).expanduser() / "backbones"
    ensure_writable(directory)
    trained_now = False
    if model.checkpoint is not None:
        path = model.checkpoint
        net = load_checkpoint(path, arch=arch, num_classes=data.num_classes, kwargs=kwargs)
    else:
        recipe = model.train
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", arch)
        path = directory / f"{safe}-{_cache_key(arch, kwargs, data, recipe, seed)[:16]}.pt"
        if path.is_file():
            net = _load_cached(path, arch=arch, num_classes=data.num_classes, kwargs=kwargs)
        else:
            net = _train_and_cache(arch, kwargs, data, recipe, seed=seed, device=dev, path=path)
            trained_now = True
    net.eval()
    _check_outputs(net, data, path)
    # no accuracy pass here: the feature pass computes the backbone's logits on every split
    info = BackboneInfo(
        checkpoint=path, trained_now=trained_now, weights_hash=hash_state_dict(net)
    )
    return net, info
