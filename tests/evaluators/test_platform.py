"""Platform presets load and cite sources; platform_from_config rejects bad figures in one line."""

from __future__ import annotations

import copy
import math
import re
from importlib import resources
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from evaluators.platform import PlatformError, platform_from_config

PRESETS = sorted(
    p.name.removesuffix(".yaml")
    for p in (resources.files("conf") / "platform").iterdir()
    if p.name.endswith(".yaml")
)


def test_presets_exist() -> None:
    assert {"single_mcu", "mcu_fog", "three_tier"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_into_a_platform(name: str) -> None:
    with initialize_config_module(config_module="conf", version_base=None):
        cfg = compose(config_name="config", overrides=[f"platform={name}"])
    platform = platform_from_config(OmegaConf.to_container(cfg.platform, resolve=True))  # type: ignore[arg-type]
    assert platform.name == name
    speeds = [d.macs_per_second for d in platform.devices]
    assert speeds == sorted(speeds), "devices later in the chain should be faster"


@pytest.mark.parametrize("name", PRESETS)
def test_every_figure_cites_a_source_or_says_assumption(name: str) -> None:
    """Each numeric line has a comment on it or directly above it."""
    lines = (resources.files("conf") / "platform" / f"{name}.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*[a-z_]+:\s*[-+0-9.e]+\s*(#.*)?$", line):
            above = lines[i - 1].strip()
            assert "#" in line or above.startswith("#"), f"{name}.yaml:{i + 1} {line.strip()!r}"


GOOD: dict[str, Any] = {
    "name": "p",
    "devices": [
        {
            "name": "a",
            "macs_per_second": 1e6,
            "energy_per_mac_j": 1e-9,
            "static_power_w": 0.0,
            "ram_bytes": 1024,
            "flash_bytes": 4096,
            "activation_bits": 8,
        },
        {
            "name": "b",
            "macs_per_second": 1e9,
            "energy_per_mac_j": 1e-10,
            "static_power_w": 1.0,
            "ram_bytes": 2**30,
            "flash_bytes": 2**32,
        },
    ],
    "links": [
        {"name": "l", "bandwidth_bits_per_s": 1e6, "latency_s": 0.01, "energy_per_byte_j": 1e-7}
    ],
}


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(GOOD)
    target = cfg
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return cfg


_DELETE = object()


def test_good_config_builds_checked_values() -> None:
    platform = platform_from_config(GOOD)
    assert platform.devices[1].activation_bits == 32
    assert platform.devices[0].activation_bytes_per_element == 1
    assert isinstance(platform.devices[0].ram_bytes, int)


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("devices", 0, "macs_per_second"), _DELETE, "device 'a' is missing 'macs_per_second'"),
        (("devices", 0, "macs_per_second"), 0, "macs_per_second=0 must be a finite number > 0"),
        (("devices", 1, "energy_per_mac_j"), -1e-9, r"energy_per_mac_j=-1e-09 must be .* >= 0"),
        (("devices", 0, "static_power_w"), "fast", "static_power_w='fast' is not a number"),
        (("devices", 0, "ram_bytes"), math.inf, "ram_bytes=inf must be a finite number"),
        (("devices", 0, "flash_bytes"), math.nan, "flash_bytes=nan is not a number"),
        (("devices", 0, "activation_bits"), 12, "activation_bits=12 must be 8, 16 or 32"),
        (("links", 0, "bandwidth_bits_per_s"), 0.0, "link 'l'.bandwidth_bits_per_s=0.0"),
        (("links", 0, "latency_s"), None, "link 'l' is missing 'latency_s'"),
        (("links",), [], "2 devices and 0 links; a chain needs exactly 1"),
        (("devices",), [], "has no devices"),
    ],
)
def test_bad_figures_give_one_line_errors(path: tuple[Any, ...], value: Any, match: str) -> None:
    with pytest.raises(PlatformError, match=match) as info:
        platform_from_config(_with(path, value))
    assert "\n" not in str(info.value)
