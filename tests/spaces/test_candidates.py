"""Exit candidates: true cut points (checked by graph surgery), real shapes, rules, errors."""

from __future__ import annotations

import itertools
import re
from typing import Any

import networkx as nx
import pytest
import torch
from torch import fx, nn

from evaluators.graph import ModelInputError, UntraceableModelError, trace
from evaluators.macs import count_macs
from evaluators.models import build_architecture
from spaces import ExitCandidate, cut_points, find_exit_candidates, profile_backbone
from tests.spaces._tiny import Tiny


def _digraph(gm: fx.GraphModule) -> tuple[nx.DiGraph, str, str]:
    graph = nx.DiGraph()
    for n in gm.graph.nodes:
        graph.add_node(n.name)
        graph.add_edges_from((a.name, n.name) for a in n.all_input_nodes)
    source = next(n.name for n in gm.graph.nodes if n.op == "placeholder")
    sink = next(n.name for n in gm.graph.nodes if n.op == "output")
    return graph, source, sink


def _separates(graph: nx.DiGraph, source: str, sink: str, name: str) -> bool:
    """Removing ``name`` leaves no path from the input to the output."""
    rest = graph.copy()
    rest.remove_node(name)
    return not nx.has_path(rest, source, sink)


def _real_shapes(gm: fx.GraphModule, x: torch.Tensor, names: set[str]) -> dict[str, Any]:
    """Output shapes (without batch) of ``names`` from a real forward through the graph."""
    seen: dict[str, Any] = {}

    class _Record(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if n.name in names:
                seen[n.name] = tuple(out.shape[1:])
            return out

    with torch.no_grad():
        gm.eval()
        _Record(gm).run(x)
    return seen


def _check_true_cuts_and_shapes(
    model: nn.Module, candidates: list[ExitCandidate], x: torch.Tensor
) -> None:
    """Cut property on the fx graph; shapes from a real forward of an uninitialised CPU copy."""
    gm = trace(model)
    graph, source, sink = _digraph(gm)
    assert candidates
    for c in candidates:
        assert c.kind == "node"
        assert _separates(graph, source, sink, c.name), f"{c.name} is not a cut point"
    real = _real_shapes(gm.to_empty(device="cpu"), x, {c.name for c in candidates})
    assert {c.name: c.shape for c in candidates} == real
    assert [c.index for c in candidates] == list(range(len(candidates)))
    cum = [c.cumulative_macs for c in candidates]
    assert cum == sorted(cum) and len(set(cum)) == len(cum)


def _meta(name: str) -> nn.Module:
    """A model built on the meta device: profiling costs no real compute."""
    from torchvision.models import get_model

    with torch.device("meta"):
        if name.startswith("cifar_"):
            return build_architecture(name, num_classes=10).eval()
        return get_model(name, weights=None).eval()


def _candidates(name: str, size: int) -> tuple[nn.Module, list[ExitCandidate]]:
    model = _meta(name)
    return model, find_exit_candidates(model, torch.empty(1, 3, size, size, device="meta"))


def test_resnet50_candidates_are_block_outputs_and_true_cuts() -> None:
    model, cands = _candidates("resnet50", 64)  # small input: same graph, cheap real forward
    _check_true_cuts_and_shapes(model, cands, torch.randn(1, 3, 64, 64))
    assert all(re.fullmatch(r"maxpool|layer\d_\d+_relu_2", c.name) for c in cands)
    assert len(cands) == 16  # stem + 15 of 16 blocks: after the last only pool + fc remain


def test_mobilenet_v2_candidates_are_true_cuts() -> None:
    model, cands = _candidates("mobilenet_v2", 64)
    _check_true_cuts_and_shapes(model, cands, torch.randn(1, 3, 64, 64))


def test_vit_b_16_candidates_are_the_residual_stream() -> None:
    model, cands = _candidates("vit_b_16", 224)
    _check_true_cuts_and_shapes(model, cands, torch.randn(1, 3, 224, 224))
    assert {c.shape for c in cands} == {(197, 768)}
    assert len(cands) == 24  # before the encoder, then after each attention and MLP residual add


def test_cifar_resnet152_cuts_shapes_and_macs() -> None:
    model = _meta("cifar_resnet152")
    x = torch.empty(1, 3, 32, 32, device="meta")
    profile = profile_backbone(model, x)
    cands = list(profile.candidates)
    assert len(cands) == 50  # stem + 49 of 50 blocks
    assert profile.total_macs == count_macs(model, x)
    assert profile.total_macs == pytest.approx(3.72e9, rel=0.005)
    _check_true_cuts_and_shapes(model, cands, torch.randn(1, 3, 32, 32))


def test_cut_points_equal_brute_force_separators() -> None:
    """Every node whose removal disconnects input from output, and only those."""
    for name in ("resnet18", "mobilenet_v2", "googlenet"):
        gm = trace(_meta(name) if name != "googlenet" else _googlenet())
        graph, source, sink = _digraph(gm)
        brute = [
            n.name
            for n in gm.graph.nodes
            if n.name not in (source, sink) and _separates(graph, source, sink, n.name)
        ]
        assert [n.name for n in cut_points(gm.graph)] == brute, name


def _googlenet() -> nn.Module:
    from torchvision.models import googlenet

    with torch.device("meta"):
        return googlenet(weights=None, aux_logits=False, init_weights=False).eval()


CONV1, CONV2 = 4 * 9 * 64, 8 * 4 * 9 * 16  # MACs: 3x3 kernels on 8x8 and 4x4 outputs


def test_zero_mac_chains_collapse_and_tail_rule() -> None:
    x = torch.randn(1, 1, 8, 8)
    # fc is 40 MACs = 0.57% of the total: the point before it is dropped by default
    assert [c.name for c in find_exit_candidates(Tiny(5), x)] == ["relu1"]
    kept = find_exit_candidates(Tiny(5), x, tail_fraction=0.0)
    assert [c.name for c in kept] == ["relu1", "flatten"]
    # with 10 classes (80 MACs = 1.1%) the last point stays
    assert [c.name for c in find_exit_candidates(Tiny(10), x)] == ["relu1", "flatten"]
    first = kept[0]
    assert (first.cumulative_macs, first.segment_macs) == (CONV1, CONV1)
    assert kept[1].segment_macs == CONV2 and kept[1].shape == (8,)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(512, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(x + self.branch(x))


def test_no_candidate_inside_a_residual_block() -> None:
    names = [c.name for c in find_exit_candidates(Residual(), torch.randn(1, 3, 8, 8))]
    assert names == ["stem", "add", "head_1"]


def test_thinning_spreads_candidates_by_macs() -> None:
    torch.manual_seed(0)
    model = build_architecture("cifar_resnet18", num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    full = profile_backbone(model, x)
    total = full.total_macs
    spaced = find_exit_candidates(model, x, min_mac_fraction=0.2)
    gaps = [b.cumulative_macs - a.cumulative_macs for a, b in itertools.pairwise(spaced)]
    assert spaced[0].cumulative_macs >= 0.2 * total and min(gaps) >= 0.2 * total
    two = profile_backbone(model, x, max_candidates=2)
    assert len(two.candidates) == 2
    for c, target in zip(two.candidates, (total / 3, 2 * total / 3), strict=True):
        nearest = min(abs(f.cumulative_macs - target) for f in full.candidates)
        assert abs(c.cumulative_macs - target) == nearest
    # segment figures are recomputed against the kept previous candidate
    for prof in (full, two):
        segs = [c.segment_macs for c in prof.candidates]
        assert sum(segs) + prof.tail_macs == total
        assert [c.cumulative_macs for c in prof.candidates] == [
            sum(segs[: i + 1]) for i in range(len(segs))
        ]
        params = sum(c.segment_param_bytes for c in prof.candidates) + prof.tail_param_bytes
        assert params == prof.total_param_bytes
    assert find_exit_candidates(model, x, max_candidates=0) == []


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_candidates": -1}, "max_candidates=-1"),
        ({"min_mac_fraction": 1.5}, "min_mac_fraction=1.5"),
    ],
)
def test_bad_options(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        find_exit_candidates(Tiny(), torch.randn(1, 1, 8, 8), **options)


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x  # data-dependent control flow


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.block = nn.Sequential(nn.ReLU(), Gate())
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(4 * 64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.conv(x)))


def test_untraceable_model_names_module_and_way_out() -> None:
    with pytest.raises(UntraceableModelError) as info:
        find_exit_candidates(Untraceable(), torch.randn(1, 1, 8, 8))
    message = str(info.value)
    assert "\n" not in message
    assert "block.1 (Gate)" in message and "model.candidates.modules" in message


def test_forward_hooks_for_listed_modules() -> None:
    torch.manual_seed(0)
    model = Untraceable()
    x = torch.randn(1, 1, 8, 8)
    cands = find_exit_candidates(model, x, modules=["block", "conv"])
    assert [(c.name, c.kind, c.shape) for c in cands] == [
        ("conv", "module", (4, 8, 8)),
        ("block", "module", (4, 8, 8)),
    ]
    assert cands[0].cumulative_macs == 4 * 9 * 64 and cands[1].segment_macs == 0
    assert cands[0].segment_param_bytes == 4 * (36 + 4)
    profile = profile_backbone(model, x, modules=["conv", "block"])
    assert profile.tail_macs == 4 * 64 * 3 and profile.total_macs == count_macs(model, x)


def test_hooks_agree_with_graph_on_a_traceable_model() -> None:
    torch.manual_seed(0)
    model = build_architecture("cifar_resnet18", num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    graph = profile_backbone(model, x)
    hooked = profile_backbone(model, x, modules=["layer1", "layer2", "layer3"])
    by_macs = {c.cumulative_macs: c.shape for c in graph.candidates}
    for c in hooked.candidates:
        assert by_macs[c.cumulative_macs] == c.shape
    assert hooked.total_macs == graph.total_macs
    assert hooked.total_param_bytes == graph.total_param_bytes


def test_unknown_or_repeated_modules() -> None:
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"no module 'blok'.*did you mean block"):
        find_exit_candidates(Untraceable(), x, modules=["blok"])

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.ReLU()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.act(self.act(x)))

    with pytest.raises(ValueError, match="'act' runs more than once"):
        find_exit_candidates(Twice(), torch.randn(1, 4), modules=["act"])


def test_wrong_input_shape_names_expected_channels() -> None:
    with pytest.raises(ModelInputError) as info:
        find_exit_candidates(Tiny(), torch.randn(1, 3, 8, 8))
    message = str(info.value)
    assert "\n" not in message
    assert "(1, 3, 8, 8)" in message and "expects 1 input channels" in message
    assert "input_shape" in message
    with pytest.raises(ModelInputError, match="does not fit"):
        find_exit_candidates(Untraceable(), torch.randn(1, 3, 8, 8), modules=["conv"])


def test_model_without_tensor_output() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.fc(x), x

    with pytest.raises(ModelInputError, match="return"):
        find_exit_candidates(Pair(), torch.randn(1, 4))
    with pytest.raises(ModelInputError, match="tuple, not a tensor"):
        find_exit_candidates(Pair(), torch.randn(1, 4), modules=["fc"])
