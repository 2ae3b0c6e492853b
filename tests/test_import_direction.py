"""Which package may import which, read from the source files' import statements.

``evaluators`` imports neither ``spaces`` nor ``search``; ``spaces`` does not import
``search``; inside ``search``, only the deployment wing (``search.deploy`` and
``search.profile``, which times the deployed runtime's pieces) imports ``search.deploy``
(deployment reads run folders; the search side never depends on it). One crossing is allowed:
``search.pipeline`` imports ``search.profile`` to price a profiled device measured on the fly
(``platform=host``), and nothing else on the search side imports ``search.profile``. Every
import statement counts, also those inside functions and ``if TYPE_CHECKING:`` blocks.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (they never run)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        name = getattr(test, "id", getattr(test, "attr", None))
        if isinstance(node, ast.If) and name == "TYPE_CHECKING":
            inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return inside


def imported_modules(path: Path, *, root: Path = ROOT, runtime_only: bool = False) -> set[str]:
    """Absolute names of the modules that ``path`` (under ``root``) imports, relative
    imports resolved; ``runtime_only`` leaves out ``if TYPE_CHECKING:`` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    skip = _type_checking_only(tree) if runtime_only else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            stem = ".".join([*base, *([node.module] if node.module else [])])
            found.add(stem)
            # ``from pkg import sub`` may import the submodule ``pkg.sub``
            found.update(f"{stem}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
            found.add(node.args[0].value)  # importlib.import_module("a.b") with a literal name
    return found


def _violations(package: str, forbidden: tuple[str, ...], *, exempt: tuple[str, ...] = ()
                ) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        name = _module_name(path, ROOT)
        if any(name == e or name.startswith(e + ".") for e in exempt):
            continue
        bad += [f"{path.relative_to(ROOT)} imports {m}" for m in sorted(imported_modules(path))
                if any(m == f or m.startswith(f + ".") for f in forbidden)]
    return bad


def test_the_scanner_sees_absolute_relative_and_nested_imports(tmp_path: Path) -> None:
    module = tmp_path / "pkg" / "sub" / "mod.py"
    module.parent.mkdir(parents=True)
    module.write_text("import os\nfrom . import sibling\nfrom ..other import thing\n"
                      "def f():\n    from search.deploy import runtime\n"
                      "importlib.import_module('search.run')\n")
    found = imported_modules(module, root=tmp_path)
    assert {"os", "pkg.sub.sibling", "pkg.other", "search.deploy.runtime",
            "search.run"} <= found
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.late\n")
    assert "pkg.late" in imported_modules(module, root=tmp_path)
    assert "pkg.late" not in imported_modules(module, root=tmp_path, runtime_only=True)


def test_the_scanner_finds_the_imports_that_exist() -> None:
    """Guards the checks below against a scanner that finds nothing."""
    assert "search.deploy.runtime" in imported_modules(ROOT / "search/deploy/export.py")
    assert _violations("search", ("search.deploy",))  # search.deploy imports itself


DEPLOYMENT = ("search.deploy", "search.profile")


def test_the_search_side_never_imports_deployment() -> None:
    assert _violations("search", ("search.deploy",), exempt=DEPLOYMENT) == []
    # the one crossing: the pipeline measures platform=host's profile on the fly
    assert _violations("search", ("search.profile",), exempt=(*DEPLOYMENT, "search.pipeline")
                       ) == []


def test_spaces_never_import_search() -> None:
    assert _violations("spaces", ("search",)) == []


def test_evaluators_import_neither_spaces_nor_search() -> None:
    assert _violations("evaluators", ("search", "spaces")) == []


def test_the_run_entry_leaves_heavy_optional_modules_unimported() -> None:
    """``import search.run`` (every ``python -m search`` pays it) loads neither scipy.stats
    (the comparison report's and the guarantee's statistics), onnxruntime, zmq nor the
    deployment wing: each is imported where it is used."""
    import subprocess
    import sys

    heavy = ["scipy.stats", "onnxruntime", "zmq", "search.deploy.runtime"]
    code = ("import sys, search.run; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == ""
