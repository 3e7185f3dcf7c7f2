"""Grouped convolutions prune by keeping the same positions in every block of channels."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from nets import randomize_bn

from qmixprune import analyze, apply_plan, count, make_plan
from qmixprune.errors import UserError
from qmixprune.pruning import Plan, plan_for_counts, slot_indices


class GroupedStack(nn.Module):
    """Plain grouped convs: in != out, two group counts tied on one space, a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.g1 = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.g2 = nn.Conv2d(32, 32, 3, padding=1, groups=8)
        self.g3 = nn.Conv2d(32, 32, 3, padding=1, groups=2)
        self.g4 = nn.Conv2d(32, 24, 1, groups=4)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.g1(x))
        x = F.relu(self.g2(x)) + x
        x = F.relu(self.g4(F.relu(self.g3(x))))
        return self.fc(x.mean((2, 3)))


def masked_reference(model, graph, plan):
    """The original with removed channels zeroed where they are consumed (grouped convs
    read block-local input positions)."""
    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    for slot in graph.slots:
        kept = slot_indices(graph, plan, slot.segs)
        if kept is None or slot.kind not in ("conv_in", "gconv_in", "linear_in"):
            continue
        m = modules[slot.module]
        w = m.weight.data
        removed = torch.ones(m.in_channels if slot.kind == "gconv_in" else w.shape[1], dtype=bool)
        removed[kept] = False
        if slot.kind != "gconv_in":
            w[:, removed] = 0
            continue
        block_in, block_out = m.in_channels // m.groups, m.out_channels // m.groups
        for c in removed.nonzero().flatten().tolist():
            b = c // block_in
            w[b * block_out : (b + 1) * block_out, c % block_in] = 0
    return ref


def _resnext():
    return torchvision.models.ResNet(
        torchvision.models.resnet.Bottleneck,
        [1, 1, 1, 1],
        num_classes=5,
        groups=8,
        width_per_group=4,
    )


def _regnet():
    params = torchvision.models.regnet.BlockParams.from_init_params(
        depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8
    )
    return torchvision.models.RegNet(params, num_classes=5)


CASES = [("stack", GroupedStack), ("resnext", _resnext), ("regnet", _regnet)]


@pytest.mark.parametrize("name,make", CASES, ids=[c[0] for c in CASES])
def test_grouped_pruned_equals_masked_original(name, make):
    torch.manual_seed(0)
    model = randomize_bn(make()).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    graph = analyze(model, x)
    grouped = [g for g in graph.prunable if g.period > 1]
    assert grouped, "grouped convs must be prunable"
    plan = make_plan(model, graph, 0.3)
    assert any(n in plan.keep for n in (g.name for g in grouped))
    for g in grouped:
        assert len(plan.keep.get(g.name, range(g.channels))) % g.period == 0
    pruned = apply_plan(model, graph, plan).eval()
    ref = masked_reference(model, graph, plan).eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref(x), atol=1e-6, rtol=0)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for n, m in pruned.named_modules():
        if n in convs:
            assert m.groups == convs[n].groups  # groups kept, blocks narrower
    # a ratio of 0.3 cuts at least 20 % of the MACs
    assert count(pruned, x[:1])[0] <= 0.8 * count(model, x[:1])[0]


def test_a_plan_that_breaks_the_blocks_is_refused():
    model = GroupedStack().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = analyze(model, x)
    g = graph.group("g1")
    assert g.period == 8  # g1's 4 groups, g2's 8 (reading it and tied by the add), g3's 2
    with pytest.raises(UserError, match="g1 feeds grouped convs"):
        apply_plan(model, graph, Plan({"g1": tuple(range(24))}))


def test_search_env_keeps_grouped_counts_in_blocks_and_on_budget():
    from qmixprune.search import EnvConfig, build_env

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 8, 8, generator=gen), torch.zeros(4)) for _ in range(2)]
    cfg = EnvConfig(target_flops=0.5, round_to=1, calib_batches=2)
    env = build_env(GroupedStack().eval(), None, cfg, score=lambda m: 0.0, calib=batches)
    periods = {g: env.graph.group(g).period for g in env.groups}
    assert periods["g1"] == 8
    for keep in (0.3, 0.55, 0.9):
        counts = env.project(torch.full((env.n_agents,), keep))
        assert all(counts[g] % periods[g] == 0 for g in env.groups)
        assert env.cost.ratio(counts) <= 0.5
        plan = plan_for_counts(env.graph, counts, env.ranking)
        pruned = apply_plan(env.model, env.graph, plan)
        x = torch.zeros(1, 3, 8, 8)
        assert count(pruned, x)[0] == pytest.approx(env.cost.macs(counts))  # exact cost
