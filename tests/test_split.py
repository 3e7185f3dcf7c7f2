"""Chunks of the channel axis: each piece its own channel space, tied to its consumers,
and the pruned model (whose chunk halves whatever it gets) equal to the masked original."""

import warnings

import pytest
import torch
from nets import C2fLike, GhostAdd, GhostSlice, HalvesNet, SplitSizes, YoloLike, randomize_bn
from test_prune import masked_reference

from qmixprune import analyze, apply_plan, count, load, make_plan, save
from qmixprune.graph.spaces import Spaces


def _quiet_analyze(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return analyze(model, x)


def test_spaces_cut_union_and_leaves():
    s = Spaces()
    a, b = s.new(8), s.new(8)
    pa = s.cut(a, [4, 4])
    assert s.cut(a, [4, 4]) == pa  # the same cut again: the same pieces
    assert s.cut(a, [2, 6]) is None  # cut otherwise: refused
    assert s.union(a, b)  # b now stands for the same two pieces
    assert s.leaves(b) == [s.find(p) for p in pa]
    assert s.union(pa[0], pa[1])
    assert s.leaves(a) == [s.find(pa[0])] * 2
    c = s.new(8)
    s.cut(c, [2, 6])
    assert not s.union(a, c)  # cut differently: not tied
    s.blocked[s.find(a)] = "why"
    s.settle()
    assert s.blocked[s.find(pa[0])] == "why"


@pytest.mark.parametrize(
    "make,shape,capture,chunked",
    [
        (HalvesNet, (3, 8, 8), "fx", "a.0"),
        (lambda: C2fLike(3, 8, 2), (3, 8, 8), "export", "cv1.0"),
        (YoloLike, (3, 32, 32), "export", "c2f2.cv1.0"),
    ],
    ids=["fx-chunk", "c2f", "yolo-like"],
)
def test_pruned_equals_masked_original(make, shape, capture, chunked):
    model = randomize_bn(make()).double().eval()
    x = torch.randn(2, *shape, dtype=torch.float64)
    graph = _quiet_analyze(model, x)
    assert graph.capture == capture
    plan = make_plan(model, graph, 0.5)
    assert chunked in plan.keep  # the chunked conv's output is pruned
    pruned = apply_plan(model, graph, plan).eval()
    ref = masked_reference(model, graph, plan).eval()
    with torch.no_grad():
        a, b, orig = pruned(x), ref(x), model(x)
    a, b, orig = (y if isinstance(y, list) else [y] for y in (a, b, orig))
    for p, r, o in zip(a, b, orig):
        assert p.shape == o.shape
        torch.testing.assert_close(p, r, atol=1e-9, rtol=0)
    assert any((p - o).abs().max() > 1e-6 for p, o in zip(a, orig))  # pruning changed it
    assert count(pruned, x[:1])[0] < count(model, x[:1])[0]


def test_chunk_pieces_are_tied_and_the_cut_conv_keeps_both():
    model = C2fLike(3, 8, 1).eval()
    graph = _quiet_analyze(model, torch.randn(1, 3, 8, 8))
    g = graph.group("cv1.0")
    # the two halves keep the same positions: one group of 4 channels
    assert g.prunable and g.channels == 4
    out = next(s for s in g.slots if s.module == "cv1.0" and s.kind == "conv_out")
    assert [graph.space_group[s.space] for s in out.segs] == ["cv1.0", "cv1.0"]
    # the residual add ties the bottleneck's output to the second half
    assert "m.0.cv2.0" in g.modules and "m.0.cv1.0" in g.modules
    plan = make_plan(model, graph, {"cv1.0": 0.5})
    pruned = apply_plan(model, graph, plan)
    assert pruned.cv1[0].out_channels == 4 and pruned.cv2[0].in_channels == 6


def test_split_at_literal_sizes_blocks_the_split_channels():
    with pytest.warns(UserWarning, match="literal sizes"):
        graph = analyze(HalvesNet(literal=True), torch.randn(1, 3, 8, 8))
    assert not graph.group("a.0").prunable
    assert "literal sizes" in graph.group("a.0").reason
    assert graph.group("left.0").prunable and graph.group("right.0").prunable


def test_export_capture_is_named_with_why_fx_failed():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = analyze(C2fLike(3, 8, 1), torch.randn(1, 3, 8, 8))
    text = [str(w.message) for w in caught]
    assert graph.capture == "export" and not graph.parts
    assert any("torch.fx" in t and "torch.export" in t for t in text), text


def test_export_capture_leaves_model_state_alone():
    model = randomize_bn(C2fLike(3, 8, 1)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _quiet_analyze(model, torch.randn(2, 3, 8, 8))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_slice_that_keeps_every_channel_passes_them_on():
    model = randomize_bn(GhostSlice(8)).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = analyze(model, x)
    assert graph.group("primary.0").prunable and graph.group("cheap.0").prunable
    plan = make_plan(model, graph, 0.5)
    pruned = apply_plan(model, graph, plan).eval()
    with torch.no_grad():  # the literal bound clamps to the pruned width
        torch.testing.assert_close(pruned(x), masked_reference(model, graph, plan)(x))
    with pytest.warns(UserWarning, match="getitem"):
        cut = analyze(GhostSlice(6), torch.randn(1, 3, 8, 8))
    assert not cut.group("cheap.0").prunable


def test_split_sizes_held_in_a_list_follow_the_kept_counts(tmp_path):
    model = randomize_bn(SplitSizes()).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = analyze(model, x)
    assert [(s.module, s.attr, s.whole) for s in graph.sizes] == [("", "splits", False)]
    assert graph.group("a.0").prunable
    plan = make_plan(model, graph, {"a.0": 0.5})
    pruned = apply_plan(model, graph, plan).eval()
    assert sum(pruned.splits) == pruned.a[0].out_channels < 8 and model.splits == [3, 5]
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_reference(model, graph, plan)(x))
    restored = load(save(pruned, tmp_path / "s.safetensors", (3, 8, 8)), model=SplitSizes())
    assert restored.splits == pruned.splits


def test_split_sizes_held_in_an_int_block():
    # the module may read the width from a shape elsewhere (YOLO11's attention): not guessed
    with pytest.warns(UserWarning, match="literal sizes"):
        graph = analyze(SplitSizes(one_int=True), torch.randn(1, 3, 8, 8))
    assert not graph.sizes and not graph.group("a.0").prunable


def test_add_of_differently_cut_layouts_ties_them_run_by_run():
    model = randomize_bn(GhostAdd()).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = analyze(model, x)
    assert set(graph.group("p.0").modules) >= {"p.0", "short.0"}
    assert set(graph.group("q.0").modules) >= {"q.0", "short.0"}
    assert graph.group("p.0").prunable and graph.group("q.0").prunable
    plan = make_plan(model, graph, {"p.0": 0.5, "q.0": 0.25})
    pruned = apply_plan(model, graph, plan).eval()
    assert pruned.short[0].out_channels == 2 + 3
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_reference(model, graph, plan)(x))
