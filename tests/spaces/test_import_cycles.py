"""No import cycle inside spaces/, evaluators/ or search/.

Read from the source files' import statements (:func:`tests.test_import_direction
.imported_modules`), without importing anything; imports inside functions count, since they
only postpone a cycle to the first call; ``if TYPE_CHECKING:`` imports never run, so not.
"""

from __future__ import annotations

import networkx as nx
import pytest

from tests.test_import_direction import ROOT, imported_modules

PACKAGES = ("spaces", "evaluators", "search")


def _module_name(path_parts: tuple[str, ...]) -> str:
    return ".".join(path_parts[:-1] if path_parts[-1] == "__init__" else path_parts)


def _graph(package: str) -> nx.DiGraph:
    """Modules of ``package`` and which of them imports which."""
    paths = {
        _module_name(p.relative_to(ROOT).with_suffix("").parts): p
        for p in sorted((ROOT / package).rglob("*.py"))
    }
    graph = nx.DiGraph()
    graph.add_nodes_from(paths)
    for name, path in paths.items():
        targets = imported_modules(path, runtime_only=True) & set(paths) - {name}
        graph.add_edges_from((name, target) for target in targets)
    return graph


def test_the_graph_sees_the_imports() -> None:
    assert _graph("spaces").has_edge("spaces.profile", "spaces.candidates")
    assert _graph("search").has_edge("search.run", "search.pipeline")


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    cycles = list(nx.simple_cycles(_graph(package)))
    assert not cycles, f"import cycles in {package}/: " + "; ".join(
        " -> ".join([*c, c[0]]) for c in cycles
    )
