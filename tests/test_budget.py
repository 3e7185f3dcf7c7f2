import pytest
import torch
from nets import Mixed

from qmixprune import analyze, apply_plan, count
from qmixprune.budget import Budget, CostModel, uniform_counts
from qmixprune.errors import UserError
from qmixprune.models import create
from qmixprune.pruning import period_count, plan_for_counts


@pytest.mark.parametrize("name", ["vgg16", "resnet56", "torchvision:mobilenet_v2", "mixed"])
def test_cost_model_matches_real_pruned_count(name):
    m = Mixed() if name == "mixed" else create(name, width=1.0)
    x = torch.zeros(1, 3, 32, 32)
    g = analyze(m, x)
    cost = CostModel(m, g, x)
    assert cost.total == count(m, x)[0]
    gen = torch.Generator().manual_seed(1)
    # counts a grouped conv can keep (a multiple of its blocks), as the budget produces them
    counts = {
        grp.name: period_count(grp, int(torch.randint(1, grp.channels + 1, (1,), generator=gen)))
        for grp in g.prunable
    }
    pruned = apply_plan(m, g, plan_for_counts(g, counts))
    assert cost.macs(counts) == pytest.approx(count(pruned, x)[0], rel=1e-9)


def test_uniform_counts_meets_target():
    m = create("vgg16")
    x = torch.zeros(1, 3, 32, 32)
    g = analyze(m, x)
    cost = CostModel(m, g, x)
    counts = uniform_counts(Budget(cost, 0.4), [p.name for p in g.prunable], round_to=8)
    assert 0.39 <= cost.ratio(counts) <= 0.4
    assert all(k % 8 == 0 for k in counts.values())
    with pytest.raises(UserError, match="unreachable"):
        uniform_counts(Budget(cost, 0.001), [p.name for p in g.prunable], min_channels=32)
