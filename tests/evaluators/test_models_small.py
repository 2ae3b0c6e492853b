"""The small backbones: shapes, torch.fx traceability, and where their MACs sit."""

from __future__ import annotations

import pytest
import torch

from evaluators.graph import trace
from evaluators.macs import count_macs
from evaluators.models import build_architecture
from evaluators.models.mnist_cnn import MnistCNN


@pytest.mark.parametrize(
    ("arch", "shape", "classes"),
    [
        ("mnist_cnn", (1, 28, 28), 10),
        ("dscnn", (1, 49, 10), 12),
        ("ecg_cnn", (1, 187), 5),
        ("ecg_cnn", (1, 256), 5),
    ],
)
def test_shape_and_fx_trace(arch: str, shape: tuple[int, ...], classes: int) -> None:
    torch.manual_seed(0)
    model = build_architecture(arch, num_classes=classes).eval()
    x = torch.randn(3, *shape)
    out = model(x)
    assert out.shape == (3, classes)
    graph = trace(model)
    assert torch.allclose(graph(x), out)
    assert not [
        n for n in graph.graph.nodes if n.op == "call_function" and "getattr" in str(n.target)
    ]


def test_mnist_cnn_spends_most_macs_after_the_early_blocks() -> None:
    model = MnistCNN().eval()
    x = torch.zeros(1, 1, 28, 28)
    total = count_macs(model, x)
    cumulative = [count_macs(model.features[:k], x) / total for k in range(1, 8)]
    assert len(model.features) == 7
    assert cumulative == sorted(cumulative)
    assert cumulative[2] < 0.25  # three blocks in: under a quarter of the work done
    assert cumulative[4] < 0.5  # five of seven blocks: still under half
    assert 5_000_000 < total < 6_000_000


def test_dscnn_matches_mlperf_tiny_size() -> None:
    model = build_architecture("dscnn", num_classes=12).eval()
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, torch.zeros(1, 1, 49, 10))
    # MLPerf Tiny reports about 2.7 M MACs / 24.9 k parameters for DS-CNN (with conv biases)
    assert 2_500_000 < macs < 2_900_000 and 20_000 < params < 26_000
    stem = model.stem(torch.zeros(1, 1, 49, 10))
    assert stem.shape == (1, 64, 25, 5)  # 'same' padding with stride 2, as in the Keras reference


def test_bad_widths_name_the_kwargs() -> None:
    with pytest.raises(ValueError, match=r"model\.kwargs\.widths"):
        build_architecture("mnist_cnn", num_classes=10, widths=[8, 16], strides=[1])
    with pytest.raises(ValueError, match=r"model\.kwargs\.widths"):
        build_architecture("ecg_cnn", num_classes=5, widths=[], strides=[])
