"""The real EENN: graph splitting, true early exit, and exact agreement with the proxy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from evaluators.costs import path_costs
from evaluators.eenn import EENNConfig, ExitChoice
from evaluators.graph import trace
from evaluators.proxy import ProxyEvaluator
from search.deploy.evaluate import compare_exits, predicted_exits
from search.deploy.runtime import RuntimeBuildError, build_eenn, run_dataset, split_graph
from spaces.candidates import ExitCandidate
from tests.search.deploy._eenn_fixture import configs, gap_threshold, setup, tie_threshold


def test_split_segments_compose_to_the_model_and_share_weights() -> None:
    s = setup()
    gm = trace(s.model)
    names = [c.name for c in s.profile.candidates]
    parts = split_graph(gm, names)
    assert len(parts) == len(names) + 1
    x = s.data["val"].tensors[0][:16]
    h = x
    with torch.no_grad():
        for part in parts:
            h = part(h)
        assert torch.equal(h, s.model(x))
    own = {p.data_ptr() for p in s.model.parameters()}
    assert {p.data_ptr() for part in parts for p in part.parameters()} <= own


def test_split_rejects_a_node_that_is_not_a_cut() -> None:
    s = setup()
    gm = trace(s.model)
    # the first conv of the residual block: the skip connection jumps over it
    inner = next(n.name for n in gm.graph.nodes if n.op == "call_module" and n.target == "b1")
    with pytest.raises(RuntimeBuildError, match="not a single-tensor cut"):
        split_graph(gm, [inner])


@pytest.mark.parametrize("index", range(5))
def test_runtime_matches_the_proxy_exactly_on_val(index: int) -> None:
    s = setup()
    config = configs(s)[index]
    eenn = build_eenn(s.model, config, candidates=s.profile.candidates, heads=s.heads.heads)
    ev = ProxyEvaluator(split=s.table.val, costs=s.costs, platform=s.platform)
    scores = ev.evaluate([config])
    # other batch compositions than the feature cache's 32, per batch and pooled
    for batch_size, pooled in ((7, False), (64, False), (7, True), (64, True)):
        rec = run_dataset(eenn, s.data["val"], batch_size=batch_size, pooled=pooled)
        expected = predicted_exits(s.table.val, config)
        np.testing.assert_array_equal(rec.exit, expected)
        assert rec.accuracy == pytest.approx(float(scores.accuracy[0]), abs=0)
        paths = path_costs(config, s.costs, s.platform)
        assert paths.macs[rec.exit].mean() == pytest.approx(float(scores.macs[0]), rel=1e-12)
        assert paths.energy_j[rec.exit].mean() == pytest.approx(float(scores.energy_j[0]),
                                                                rel=1e-12)
        cands = [e.candidate for e in config.exits]
        counts = np.bincount(rec.exit, minlength=len(cands) + 1)
        np.testing.assert_array_equal(counts[:-1], scores.exit_count[0, cands])
        assert counts[-1] == scores.final_count[0]
        np.testing.assert_array_equal(rec.device, paths.device[rec.exit])
        # predictions at every exit are the table's
        table_pred = np.where(rec.exit == len(cands), s.table.val.final_pred, -1)
        for k, e in enumerate(config.exits):
            table_pred = np.where(rec.exit == k, s.table.val.head_pred[e.candidate, e.head],
                                  table_pred)
        np.testing.assert_array_equal(rec.prediction, table_pred)


def test_the_fidelity_check_sees_a_single_sample_move() -> None:
    """Moving one threshold past one val confidence changes exactly one sample's exit."""
    s = setup()
    e = configs(s)[1].exits[0]
    metric = "max_softmax"
    before = EENNConfig(exits=(e,), boundaries=(1, 4), metric=metric)
    moved = gap_threshold(s, metric, e.candidate, e.head, 0.6, shift=1)
    after = EENNConfig(exits=(ExitChoice(candidate=e.candidate, head=e.head, threshold=moved),),
                       boundaries=(1, 4), metric=metric)
    eenn = build_eenn(s.model, after, candidates=s.profile.candidates, heads=s.heads.heads)
    rec = run_dataset(eenn, s.data["val"], batch_size=64)
    assert compare_exits(rec, s.table.val, after) == (0, 0)
    assert compare_exits(rec, s.table.val, before)[0] >= 1


def test_thresholds_on_a_val_confidence_only_disagree_as_float_ties() -> None:
    """Thresholds equal to a val confidence (which the space avoids): only those samples flip."""
    s = setup()
    n_c = s.costs.n_candidates
    for metric, head in (("max_softmax", 1), ("margin", 0)):
        exits = tuple(ExitChoice(candidate=c, head=head,
                                 threshold=tie_threshold(s, metric, c, head, q))
                      for c, q in zip(range(n_c), (0.7, 0.5, 0.4, 0.3), strict=False))
        config = EENNConfig(exits=exits, boundaries=(1, 2), metric=metric)
        eenn = build_eenn(s.model, config, candidates=s.profile.candidates, heads=s.heads.heads)
        for batch_size in (1, 5, 64):  # on this machine's MKL, batch 1 and 5 flip a tie or two
            rec = run_dataset(eenn, s.data["val"], batch_size=batch_size)
            mismatches, ties = compare_exits(rec, s.table.val, config)
            assert mismatches == ties <= len(exits)


def test_true_early_exit_shrinks_the_batch() -> None:
    s = setup()
    config = configs(s)[1]
    eenn = build_eenn(s.model, config, candidates=s.profile.candidates, heads=s.heads.heads)
    seen: list[int] = []
    hooks = [st.segment.register_forward_pre_hook(lambda _m, a: seen.append(a[0].shape[0]))
             for st in eenn.stage_list()]
    x = s.data["val"].tensors[0][:64]
    out = eenn(x)
    for hk in hooks:
        hk.remove()
    left = [int((out.exit == k).sum()) for k in range(len(config.exits))]
    assert seen[0] == 64
    assert seen[1:] == [64 - sum(left[: k + 1]) for k in range(len(seen) - 1)]
    assert seen[-1] < 64  # the backbone tail ran on fewer samples


@pytest.mark.parametrize(("batch", "pool"), [(16, 16), (16, 40), (7, 32), (90, 90)])
def test_pooled_stream_gives_the_per_batch_results_on_full_batches(batch: int, pool: int) -> None:
    s = setup()
    config = configs(s)[1]
    eenn = build_eenn(s.model, config, candidates=s.profile.candidates, heads=s.heads.heads)
    x = s.data["test"].tensors[0]
    seen: list[int] = []
    hooks = [st.segment.register_forward_pre_hook(lambda _m, a: seen.append(a[0].shape[0]))
             for st in eenn.stage_list()[1:]]
    pooled = eenn.run_pooled((x[i:i + batch] for i in range(0, len(x), batch)), batch_size=pool)
    for hk in hooks:
        hk.remove()
    whole = eenn(x)
    for field in ("prediction", "exit", "device"):
        assert torch.equal(getattr(pooled, field), getattr(whole, field)), field
    torch.testing.assert_close(pooled.confidence, whole.confidence, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled.logits, whole.logits, rtol=0, atol=1e-5)
    # deep stages ran on full batches of survivors, except for one flush each at the end
    assert sum(b < pool for b in seen) <= len(eenn.stage_list()) - 1
    assert all(b <= pool for b in seen)
    with pytest.raises(ValueError, match="no input batches"):
        eenn.run_pooled(iter([]), batch_size=pool)


def test_output_fields_and_devices() -> None:
    s = setup()
    config = configs(s)[2]  # raw input sent over link 0: nothing runs on device 0
    eenn = build_eenn(s.model, config, candidates=s.profile.candidates, heads=s.heads.heads)
    out = eenn(s.data["test"].tensors[0])
    n = len(s.data["test"])
    assert out.prediction.shape == out.exit.shape == out.device.shape == (n,)
    assert out.logits.shape == (n, 4)
    assert torch.equal(out.prediction, out.logits.argmax(1))
    assert set(out.device.tolist()) <= {1, 2}
    assert {st.device for st in eenn.stage_list()} == {1, 2}


def test_bad_configs_are_one_line_errors() -> None:
    s = setup()
    cands = s.profile.candidates
    bad = EENNConfig(exits=(ExitChoice(candidate=len(cands), head=0, threshold=0.5),),
                     boundaries=(1, 2))
    with pytest.raises(RuntimeBuildError, match="candidates") as err:
        build_eenn(s.model, bad, candidates=cands, heads=s.heads.heads)
    assert "\n" not in str(err.value)
    missing = EENNConfig(exits=(ExitChoice(candidate=0, head=0, threshold=0.5),), boundaries=(1, 2))
    with pytest.raises(RuntimeBuildError, match="no trained head"):
        build_eenn(s.model, missing, candidates=cands, heads={})


def test_hook_profiled_models_cannot_be_split() -> None:
    s = setup()
    hooked = [ExitCandidate(name="stem", kind="module", index=0, shape=(6, 10, 10),
                            bytes_fp32=2400, bytes_int8=600, cumulative_macs=1, segment_macs=1,
                            segment_param_bytes=4, segment_peak_bytes=4)]
    config = EENNConfig(exits=(ExitChoice(candidate=0, head=0, threshold=0.5),), boundaries=())
    with pytest.raises(RuntimeBuildError, match="forward hooks") as err:
        build_eenn(s.model, config, candidates=hooked, heads={(0, 0): nn.Identity()})
    assert "\n" not in str(err.value)
