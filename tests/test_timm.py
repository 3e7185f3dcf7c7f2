"""timm models: created by name, pruned (fused norm-activation layers, channels-last
blocks), saved and restored onto a fresh instance."""

import pytest
import torch
from nets import randomize_bn
from test_grouped import masked_reference

from qmixprune import analyze, apply_plan, count, load, make_plan, prune, save
from qmixprune.errors import UserError
from qmixprune.models import create

pytest.importorskip("timm")


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "convnext_atto"])
def test_timm_pruned_equals_masked_original(name):
    torch.manual_seed(0)
    model = randomize_bn(create(f"timm:{name}", num_classes=5)).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    graph = analyze(model, x)
    assert len(graph.prunable) >= len(graph.groups) - 2  # all but the output (and LN-free)
    pruned = apply_plan(model, graph, make_plan(model, graph, 0.3)).eval()
    assert count(pruned, x[:1])[0] <= 0.8 * count(model, x[:1])[0]
    # a layer norm over pruned channels normalises fewer of them: exact only elsewhere
    exact = [g.name for g in graph.prunable if all(s.kind != "ln" for s in g.slots)]
    plan = make_plan(model, graph, dict.fromkeys(exact, 0.3))
    pruned = apply_plan(model, graph, plan).eval()
    ref = masked_reference(model, graph, plan).eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref(x), atol=1e-6, rtol=0)


def test_timm_save_and_restore_onto_a_fresh_instance(tmp_path):
    model = create("timm:mobilenetv3_small_050", num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    pruned = prune(model, x, 0.3).eval()
    path = save(pruned, tmp_path / "m.safetensors", input_shape=x.shape[1:])
    for restored in (
        load(path, model=create("timm:mobilenetv3_small_050", num_classes=5)),
        load(path),  # the spec rebuilds it
    ):
        with torch.no_grad():
            assert torch.equal(restored(x), pruned(x))


def test_unknown_timm_name_is_one_clear_error():
    with pytest.raises(UserError, match="timm has no model"):
        create("timm:no_such_net")
