"""Config mappings as plain, resolved Python dicts.

Entry points receive Hydra/OmegaConf nodes, tests and library callers plain dicts; every
reader below them works on a plain dict, so interpolations are resolved once and a value is
never an OmegaConf node that behaves differently from a list or a dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["plain"]


def plain(cfg: Mapping[str, Any] | DictConfig | ListConfig) -> dict[str, Any]:
    """A resolved plain-dict copy of a config mapping (an OmegaConf node or a dict)."""
    if isinstance(cfg, DictConfig | ListConfig):
        container = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(container, dict):
            raise TypeError(f"expected a config mapping, got a {type(container).__name__}")
        return {str(k): v for k, v in container.items()}
    return dict(cfg)
