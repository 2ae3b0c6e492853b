"""BackboneProfile figures checked by hand on a tiny CNN, and its BackboneCosts table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from evaluators.macs import count_macs
from evaluators.models import build_architecture
from spaces import BackboneProfile, profile_backbone, to_backbone_costs
from tests.spaces._tiny import Tiny


def _tiny_profile() -> BackboneProfile:
    return profile_backbone(Tiny(), torch.randn(3, 1, 8, 8), tail_fraction=0.0)


def test_tiny_profile_by_hand() -> None:
    profile = _tiny_profile()
    first, second = profile.candidates
    # segment 1: conv1 (4*9*64 MACs, 36+4 params), bn1 (8 params); peak: bn1 reads+writes 256+256
    assert (first.name, first.shape, first.bytes_fp32, first.bytes_int8) == (
        "relu1",
        (4, 8, 8),
        1024,
        256,
    )
    assert (first.segment_macs, first.segment_param_bytes, first.segment_peak_bytes) == (
        2304,
        4 * 48,
        4 * 512,
    )
    # segment 2: conv2 (8*4*9*16 MACs, 288+8 params, peak 256 in + 128 out), relu, pool, flatten
    assert (second.name, second.shape, second.cumulative_macs) == ("flatten", (8,), 2304 + 4608)
    assert (second.segment_macs, second.segment_param_bytes, second.segment_peak_bytes) == (
        4608,
        4 * 296,
        4 * 384,
    )
    # tail: fc (40 MACs, 45 params, 8 in + 5 out)
    assert (profile.tail_macs, profile.tail_param_bytes, profile.tail_peak_bytes) == (40, 180, 52)
    assert profile.total_macs == 6952 == count_macs(Tiny(), torch.zeros(1, 1, 8, 8))
    assert profile.total_param_bytes == 4 * (48 + 296 + 45)
    assert (profile.input_shape, profile.output_size) == ((1, 8, 8), 5)


def test_to_backbone_costs_counts_elements_not_bytes() -> None:
    profile = _tiny_profile()
    costs = to_backbone_costs(
        profile, head_macs=[[10, 20], [30, 40]], head_params=[[1, 2], [3, 4]], head_names=("a", "b")
    )
    assert costs.candidate_names == ("relu1", "flatten")
    np.testing.assert_array_equal(costs.segment_macs, [2304, 4608, 40])
    np.testing.assert_array_equal(costs.segment_params, [48, 296, 45])
    np.testing.assert_array_equal(costs.segment_peak_elems, [512, 384, 13])
    np.testing.assert_array_equal(costs.activation_elems, [256, 8])
    assert costs.input_elems == 64 and costs.total_macs == profile.total_macs
    assert costs.head_macs.shape == (2, 2) and costs.head_names == ("a", "b")
    assert costs.head_macs.dtype == np.int64
    same = profile.to_backbone_costs(head_macs=costs.head_macs, head_params=costs.head_params)
    np.testing.assert_array_equal(same.segment_params, costs.segment_params)


def test_to_backbone_costs_rejects_mismatched_heads() -> None:
    profile = _tiny_profile()
    with pytest.raises(ValueError, match="differ in shape"):
        to_backbone_costs(profile, head_macs=[[1, 2], [3, 4]], head_params=[[1], [2]])
    with pytest.raises(ValueError, match="3 head_names for 2 heads"):
        to_backbone_costs(
            profile, head_macs=np.zeros((2, 2)), head_params=np.zeros((2, 2)), head_names="abc"
        )


def test_shared_weights_count_once() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 16)
            self.out = nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.fc(torch.relu(self.fc(x)))))

    profile = profile_backbone(Shared(), torch.randn(1, 16))
    assert profile.total_param_bytes == 4 * (16 * 16 + 16 + 16 * 2 + 2)
    assert profile.total_macs == 2 * 256 + 32


def test_resnet18_totals_match_parameters_and_count_macs() -> None:
    with torch.device("meta"):
        model = build_architecture("cifar_resnet18", num_classes=10)
        x = torch.empty(1, 3, 32, 32)
    profile = profile_backbone(model, x)
    assert profile.total_param_bytes == 4 * sum(p.numel() for p in model.parameters())
    assert profile.total_macs == count_macs(model, x)
    assert profile.candidates[-1].cumulative_macs + profile.tail_macs == profile.total_macs


def test_cached_profile_equals_a_fresh_one_and_is_not_traced_again(tmp_path, monkeypatch) -> None:
    from evaluators.hashing import hash_state_dict
    from spaces import _profile_cache

    model = Tiny().eval()
    example = torch.zeros(1, 1, 8, 8)
    opts = {"tail_fraction": 0.01}
    fresh = profile_backbone(model, example, **opts)
    first = _profile_cache.cached_profile(model, example, cache_dir=tmp_path,
                                          weights_hash=hash_state_dict(model), options=opts)
    assert first == fresh

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced again")

    monkeypatch.setattr(_profile_cache, "profile_backbone", no_tracing)
    again = _profile_cache.cached_profile(model, example, cache_dir=tmp_path,
                                          weights_hash=hash_state_dict(model), options=opts)
    assert again == fresh
    entry = next((tmp_path / "profiles").iterdir())
    (entry / "profile.json").write_text("{}")  # damaged: rebuilt, never read
    monkeypatch.setattr(_profile_cache, "profile_backbone", profile_backbone)
    assert _profile_cache.cached_profile(model, example, cache_dir=tmp_path,
                                         weights_hash=hash_state_dict(model),
                                         options=opts) == fresh
