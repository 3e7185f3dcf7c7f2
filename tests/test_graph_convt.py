"""Transposed convolutions (the upsampling of segmentation heads): their in- and
out-channels prune, the pruned model equals the masked original, and their MACs count
what they compute."""

import copy

import torch
from nets import UpNet, randomize_bn

from qmixprune import analyze, apply_plan, count, make_plan
from qmixprune.pruning import slot_indices


def _masked(model, graph, plan):
    """The original with removed channels zeroed where conv and transposed conv read them."""
    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    dims = {"conv_in": 1, "convT_in": 0}
    for slot in graph.slots:
        kept = slot_indices(graph, plan, slot.segs) if slot.kind in dims else None
        if kept is None:
            continue
        w = modules[slot.module].weight
        mask = torch.ones(w.shape[dims[slot.kind]], dtype=torch.bool)
        mask[kept] = False
        w.data.index_fill_(dims[slot.kind], mask.nonzero()[:, 0], 0.0)
    return ref


def test_transposed_conv_prunes_both_sides_exactly():
    model = randomize_bn(UpNet()).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = analyze(model, x)
    assert graph.group("a.0").prunable and graph.group("up").prunable
    assert "out-channels of transposed conv up" in graph.group("up").describe()
    plan = make_plan(model, graph, 0.5)
    pruned = apply_plan(model, graph, plan).eval()
    assert pruned.up.in_channels == 4 and pruned.up.out_channels == 3
    assert pruned.up.weight.shape[:2] == (4, 3) and pruned.up.bias.shape == (3,)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), _masked(model, graph, plan)(x), atol=1e-9, rtol=0)


def test_transposed_conv_macs_count_its_inputs():
    up = torch.nn.ConvTranspose2d(8, 6, 2, 2, bias=False)
    # each of the 8 x 4 x 4 input entries feeds 6 x 2 x 2 outputs
    assert count(up, torch.zeros(1, 8, 4, 4))[0] == 8 * 4 * 4 * 6 * 2 * 2
