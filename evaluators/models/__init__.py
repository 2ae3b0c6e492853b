"""Backbone architectures by name: a registry of import paths, resolved lazily.

``arch`` in ``conf/model/*.yaml`` is a key of :data:`ARCHITECTURES`,
``torchvision:<name>`` for any torchvision classification model, or an import
path ``package.module:Callable`` for a user's own architecture.
"""

from __future__ import annotations

import importlib
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


def build_architecture(arch: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """Instantiate an untrained backbone named ``arch`` with ``num_classes`` outputs."""
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
    model = factory(num_classes=num_classes, **kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"arch={arch!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
