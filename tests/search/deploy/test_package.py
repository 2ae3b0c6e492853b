"""``search.deploy``'s own surface: lazy names that resolve, commands that run as ``-m``."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import search.deploy as deploy


def test_every_public_name_resolves_to_its_submodule_object() -> None:
    assert sorted(deploy.__all__) == sorted(deploy._HOME)
    for name in deploy.__all__:
        module = importlib.import_module(f"search.deploy.{deploy._HOME[name]}")
        assert getattr(deploy, name) is getattr(module, name), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = deploy.nope


def test_importing_the_package_loads_no_submodule_nor_torch() -> None:
    code = ("import sys, search.deploy; "
            "loaded = sorted(m for m in sys.modules if m.startswith('search.deploy.') "
            "or m in ('torch', 'onnxruntime')); print(loaded); assert not loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_commands_run_as_modules_without_a_double_import(command: str) -> None:
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m",
                           f"search.deploy.{command}", "--help"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"python -m search.deploy.{command}" in done.stdout
