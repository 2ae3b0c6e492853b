"""``python -m search.inspect model=<name>``: the exit candidates of a backbone, as a table and CSV.

Candidates and costs depend on the architecture only, not on its weights, so
the model is built on the meta device (no memory, no compute) unless its
constructor needs real tensors. The example input is ``model.input_shape``
(one sample, without the batch dimension) and the classifier has
``model.num_classes`` outputs. The table goes to the terminal and
``candidates.csv`` into the run directory.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.table import Table
from torch import nn

from evaluators.models import build_architecture
from evaluators.settings import ModelSettings
from search._console import terminal_console
from search.config import ExperimentSettings, parse_config
from spaces import BackboneProfile, profile_backbone

__all__ = ["build_backbone_and_input", "inspect", "main"]

def build_backbone_and_input(model: ModelSettings) -> tuple[nn.Module, torch.Tensor]:
    """The untrained architecture of ``model`` and a batch-of-one input.

    Built on the meta device when the constructor allows it (no weights are
    needed to find candidates); otherwise on the CPU.
    """
    (shape, num_classes), kwargs = model.shape_and_classes(), dict(model.kwargs)
    try:
        with torch.device("meta"):
            net = build_architecture(model.arch, num_classes=num_classes, **kwargs)
        return net.eval(), torch.empty(1, *shape, device="meta")
    except NotImplementedError:  # the constructor computes with tensor data
        net = build_architecture(model.arch, num_classes=num_classes, **kwargs)
        return net.eval(), torch.zeros(1, *shape)


def _frame(profile: BackboneProfile) -> pd.DataFrame:
    total = max(profile.total_macs, 1)
    rows = [
        {
            "index": c.index,
            "name": c.name,
            "kind": c.kind,
            "shape": "x".join(str(d) for d in c.shape),
            "cumulative_macs": c.cumulative_macs,
            "mac_share": c.cumulative_macs / total,
            "activation_kib_fp32": c.bytes_fp32 / 1024,
            "activation_kib_int8": c.bytes_int8 / 1024,
            "segment_macs": c.segment_macs,
            "segment_params": c.segment_param_bytes // 4,
            "segment_peak_kib_fp32": c.segment_peak_bytes / 1024,
        }
        for c in profile.candidates
    ]
    frame = pd.DataFrame(rows, columns=_COLUMNS)
    frame.attrs.update(
        total_macs=profile.total_macs,
        total_params=profile.total_param_bytes // 4,
        tail_macs=profile.tail_macs,
        tail_params=profile.tail_param_bytes // 4,
        input_shape=list(profile.input_shape),
        output_size=profile.output_size,
    )
    return frame


_COLUMNS = [
    "index",
    "name",
    "kind",
    "shape",
    "cumulative_macs",
    "mac_share",
    "activation_kib_fp32",
    "activation_kib_int8",
    "segment_macs",
    "segment_params",
    "segment_peak_kib_fp32",
]


def inspect(cfg: ExperimentSettings | DictConfig) -> pd.DataFrame:
    """One row per exit candidate of the config's model; totals in ``DataFrame.attrs``."""
    model = parse_config(cfg).model
    net, example = build_backbone_and_input(model)
    return _frame(profile_backbone(net, example, **model.candidates.options()))


def _print(frame: pd.DataFrame, *, title: str, csv: Path) -> None:
    table = Table(title=title)
    for column in ("#", "name", "shape", "cum. MACs", "share", "act. KiB (int8)", "seg. params"):
        table.add_column(column, justify="left" if column in ("name", "shape") else "right")
    for row in frame.itertuples():
        table.add_row(
            str(row.index),
            str(row.name),
            str(row.shape),
            f"{row.cumulative_macs:,}",
            f"{row.mac_share:.1%}",
            f"{row.activation_kib_int8:,.1f}",
            f"{row.segment_params:,}",
        )
    console = terminal_console()
    console.print(table)
    a = frame.attrs
    console.print(
        f"total {a['total_macs']:,} MACs, {a['total_params']:,} parameters; after the last "
        f"candidate {a['tail_macs']:,} MACs, {a['tail_params']:,} parameters; "
        f"{len(frame)} candidates -> {csv}"
    )


def check_model_choice(argv: Sequence[str]) -> None:
    """Exit with one line when ``model=<name>`` names no file in conf/model/."""
    known = sorted(
        p.name.removesuffix(".yaml")
        for p in (resources.files("conf") / "model").iterdir()
        if p.name.endswith(".yaml")
    )
    for arg in argv:
        if arg.startswith("model="):
            name = arg.split("=", 1)[1]
            if name not in known:
                sys.exit(f"error: unknown model {name!r}; use one of {', '.join(known)}")


@hydra.main(version_base=None, config_path="pkg://conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Print the candidate table and write candidates.csv into the run directory."""
    try:
        settings = parse_config(cfg)
        frame = inspect(settings)
    except (ValueError, RuntimeError) as err:
        sys.exit(f"error: {str(err).splitlines()[0]}")
    csv = Path(HydraConfig.get().runtime.output_dir) / "candidates.csv"
    frame.to_csv(csv, index=False)
    _print(frame, title=f"exit candidates of {settings.model.name}", csv=csv)


# candidates.csv goes beside inspections, not among search runs (results/runs)
INSPECT_DIR = "hydra.run.dir=results/inspect/${now:%Y-%m-%d_%H-%M-%S}"

if __name__ == "__main__":
    check_model_choice(sys.argv[1:])
    if not any(a.startswith("hydra.run.dir=") for a in sys.argv[1:]):
        sys.argv.append(INSPECT_DIR)
    main()
