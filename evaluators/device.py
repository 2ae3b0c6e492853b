"""The ``device`` setting (``cpu``, ``cuda``, ``cuda:N`` or ``auto``) as a checked torch device.

One resolution for every stage (backbone training, feature pass, head training, evaluation), so
that a missing GPU is the same one-line error everywhere instead of a silent CPU fallback.
"""

from __future__ import annotations

import torch

__all__ = ["DeviceError", "check_device", "resolve_device"]


class DeviceError(ValueError):
    """A ``device`` value that names no usable torch device; the message names the fix."""


def check_device(device: str) -> str:
    """``device`` itself when it is ``auto`` or names a torch device (present here or not).

    What a config may say; whether this machine has that device is :func:`resolve_device`'s
    question, asked where the work runs (a run folder may come from a GPU machine).
    """
    if device != "auto":
        try:
            torch.device(device)
        except (RuntimeError, TypeError):
            raise DeviceError(
                f"device={device!r} is not a torch device; use cpu, cuda or auto"
            ) from None
    return device


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; a missing GPU is an error, not a fallback."""
    if check_device(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device={device!r} but no CUDA GPU is visible; set device=cpu or device=auto"
        )
    return resolved
