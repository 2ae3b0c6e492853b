"""Backbone architectures by name: a registry of import paths, resolved lazily.

``arch`` in ``conf/model/*.yaml`` is a key of :data:`ARCHITECTURES`,
``torchvision:<name>`` for any torchvision classification model, or an import
path ``package.module:Callable`` for a user's own architecture.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch import nn

__all__ = ["ARCHITECTURES", "build_architecture"]

ARCHITECTURES: dict[str, str] = {
    "mnist_cnn": "evaluators.models.mnist_cnn:MnistCNN",
    "dscnn": "evaluators.models.dscnn:DSCNN",
    "ecg_cnn": "evaluators.models.ecg_cnn:ECGCNN",
    "cifar_resnet18": "evaluators.models.cifar_resnet:cifar_resnet18",
    "cifar_resnet34": "evaluators.models.cifar_resnet:cifar_resnet34",
    "cifar_resnet50": "evaluators.models.cifar_resnet:cifar_resnet50",
    "cifar_resnet101": "evaluators.models.cifar_resnet:cifar_resnet101",
    "cifar_resnet152": "evaluators.models.cifar_resnet:cifar_resnet152",
}


def _resolve(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"arch={path!r} is not 'package.module:Callable'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"arch={path!r} cannot be imported ({err})") from err


_CLASS_ARGS = ("num_classes", "n_classes", "classes", "num_outputs", "n_outputs", "out_features")


def _class_argument(factory: Any, arch: str, kwargs: dict[str, Any]) -> str | None:
    """The constructor argument that takes the class count: ``num_classes`` (also when it takes
    ``**kwargs``), else the one other usual name it has; ``None`` when it has none."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return "num_classes"
    names = [n for n in _CLASS_ARGS if n in params and n not in kwargs]
    if "num_classes" in names or (not names and any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())):
        return "num_classes"
    if len(names) > 1:
        raise ValueError(f"arch={arch!r} takes both {names[0]!r} and {names[1]!r}; set the class "
                         f"count yourself with model.kwargs.<the right one>=<classes>")
    return names[0] if names else None


def build_architecture(arch: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """Instantiate an untrained backbone named ``arch`` with ``num_classes`` outputs.

    The class count goes to the constructor's ``num_classes`` argument, or the one other usual
    name it has (``n_classes``, ``classes``, ...); a constructor with none is called without it
    (its outputs are checked against the data before training).
    """
    if arch.startswith("torchvision:"):
        from torchvision.models import get_model, list_models

        name = arch.split(":", 1)[1]
        if name not in list_models():
            raise ValueError(f"arch={arch!r}: torchvision has no model {name!r}")
        model: nn.Module = get_model(name, weights=None, num_classes=num_classes, **kwargs)
        return model
    if arch in ARCHITECTURES:
        factory = _resolve(ARCHITECTURES[arch])
    elif ":" in arch:
        factory = _resolve(arch)
    else:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(
            f"unknown model arch={arch!r}; use one of {known}, "
            "torchvision:<name> or module:Callable"
        )
    argument = _class_argument(factory, arch, kwargs)
    given = {argument: num_classes} if argument else {}
    try:
        model = factory(**given, **kwargs)
    except TypeError as err:
        if "argument" not in str(err):
            raise
        raise ValueError(f"arch={arch!r} cannot be built with {sorted({**given, **kwargs})} "
                         f"({str(err).splitlines()[0]}); give its other arguments as "
                         "model.kwargs.<name>=<value>, and a class-count argument named "
                         "num_classes") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"arch={arch!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
