"""Hydra configs (``pkg://conf``). Importing the package stores the settings' defaults in
Hydra's ConfigStore (:mod:`search.config`), which ``config.yaml`` and ``data/*.yaml`` extend."""

import search.config  # noqa: F401  (registers settings_defaults)
