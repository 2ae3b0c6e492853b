"""``python -m search``: the Hydra entry point; all the work is in :func:`search.run.run`."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from search.config import parse_config  # also stores the settings' defaults for Hydra
from search.errors import one_line_errors


@hydra.main(config_path="pkg://conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Compose the experiment with Hydra, parse it once, and run it in Hydra's output folder."""
    from pathlib import Path

    from search.run import run
    from search.threads import apply_cpu_threads

    with one_line_errors():
        settings = parse_config(cfg)
        apply_cpu_threads(settings.cpu_threads)
        run(settings, run_dir=Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    sys.exit(main())
