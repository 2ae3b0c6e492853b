"""eenn-search's Hydra launcher plugin: ``hydra/launcher=slurm`` (see :mod:`search.launcher`).

Hydra instantiates launchers only from the ``hydra_plugins`` namespace package and imports
every module here at start-up, so this module stays light: the work is imported on launch.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        SlurmLauncher as _SubmititSlurmLauncher,
    )
except ImportError:  # hydra-submitit-launcher ([cluster] extra) not installed: no SLURM launcher
    __all__: list[str] = []
else:

    class SlurmLauncher(_SubmititSlurmLauncher):  # type: ignore[misc]
        """submitit's SLURM launcher with a cluster check, squeue states and one-line errors."""

        def launch(self, job_overrides: Sequence[Sequence[str]],
                   initial_job_idx: int) -> Sequence[JobReturn]:
            from search.launcher import checked_launch

            return checked_launch(self, job_overrides, initial_job_idx, super().launch)

    __all__ = ["SlurmLauncher"]
