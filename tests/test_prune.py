import pytest
import torch
import torch.nn as nn
from nets import Concat, Mixed, randomize_bn

from qmixprune import analyze, apply_plan, count, make_plan, prune
from qmixprune.errors import UserError
from qmixprune.models import create
from qmixprune.pruning import kept_count, slot_indices


def masked_reference(model: nn.Module, graph, plan) -> nn.Module:
    """The original model with removed channels zeroed where they are consumed."""
    import copy

    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    for slot in graph.slots:
        if slot.kind not in ("conv_in", "linear_in"):
            continue
        kept = slot_indices(graph, plan, slot.segs)
        if kept is None:
            continue
        w = modules[slot.module].weight
        mask = torch.ones(w.shape[1], dtype=torch.bool)
        mask[kept] = False
        w.data[:, mask] = 0
    return ref


CASES = [
    ("vgg16", lambda: create("vgg16", width=0.25), (3, 32, 32)),
    ("alexnet", lambda: create("alexnet", width=0.25), (3, 32, 32)),
    ("resnet56", lambda: create("resnet56", width=0.5), (3, 32, 32)),
    ("mobilenet_v2", lambda: create("torchvision:mobilenet_v2", num_classes=5), (3, 32, 32)),
    ("mixed", Mixed, (3, 8, 8)),
    ("concat", Concat, (3, 8, 8)),
]


@pytest.mark.parametrize("name,make,shape", CASES, ids=[c[0] for c in CASES])
def test_pruned_equals_masked_original(name, make, shape):
    model = randomize_bn(make()).double().eval()
    x = torch.randn(3, *shape, dtype=torch.float64)
    graph = analyze(model, x)
    plan = make_plan(model, graph, 0.4)
    assert plan.keep, "something must be pruned"
    pruned = apply_plan(model, graph, plan).eval()
    ref = masked_reference(model, graph, plan).eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref(x), atol=1e-5, rtol=0)
        assert (pruned(x) - model(x)).abs().max() > 1e-6  # pruning did change something
    assert count(pruned, x[:1])[0] < count(model, x[:1])[0]


def test_input_model_untouched_and_result_smaller():
    m = create("vgg16", width=0.25).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    p = prune(m, torch.zeros(1, 3, 32, 32), 0.5)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert p.features[0].out_channels == 8 and m.features[0].out_channels == 16
    assert p.features[1].running_mean.shape == (8,)


class _Identity(nn.Module):
    def forward(self, x):
        return x

    def right_inverse(self, x):  # hands the stored tensor itself back to its module
        return x


def _second_home(kind: str) -> nn.Module:
    """VGG whose first BN mean (a tensor that is cut) is also reached another way."""
    m = create("vgg16", width=0.25)
    if kind == "tied":
        m.tied = nn.Module()
        m.tied.register_buffer("mean", m.features[1].running_mean)
    elif kind == "list":
        m.held = [m.features[1].running_mean, m.features[0].weight]
    elif kind == "parametrized":
        torch.nn.utils.parametrize.register_parametrization(
            m.features[1], "running_mean", _Identity()
        )
    return m


@pytest.mark.parametrize("kind", ["plain", "tied", "list", "parametrized"])
def test_pruned_copy_shares_nothing_with_the_original(kind):
    m = _second_home(kind)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    originals = {t.data_ptr() for t in [*m.parameters(), *m.buffers()]}
    p = prune(m, torch.zeros(1, 3, 32, 32), 0.5)
    copies = [t for _, t in p.named_parameters(remove_duplicate=False)]
    copies += [t for _, t in p.named_buffers(remove_duplicate=False)]
    copies += getattr(p, "held", [])
    assert not [t for t in copies if t.data_ptr() in originals]
    assert m.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert p.features[1].running_mean.shape == (8,) and p.features[0].weight.shape[0] == 8
    if kind == "tied":
        assert p.tied.mean.shape == (16,)  # cut where the plan says, copied elsewhere


def test_keeps_highest_l1_filters():
    m = Concat().eval()
    with torch.no_grad():
        m.a.weight.zero_()
        m.a.weight[[1, 4]] = 1.0  # the two strongest filters of `a`
    g = analyze(m, torch.zeros(1, 3, 8, 8))
    plan = make_plan(m, g, {"a": 0.5})
    assert set(plan.keep["a"]) >= {1, 4} and len(plan.keep["a"]) == 3


def test_ratio_dict_and_rounding():
    m = create("vgg16", width=0.5)
    g = analyze(m, torch.zeros(1, 3, 32, 32))
    plan = make_plan(m, g, {"features.0": 0.3, "features.3": 0.9}, round_to=8, min_channels=16)
    assert plan.channels() == {"features.0": 24, "features.3": 16}


@pytest.mark.parametrize(
    "c,r,round_to,floor,expected",
    [
        (64, 0.5, 1, 1, 32),
        (161, 0.0, 1, 1, 161),
        (100, 0.6, 8, 1, 40),
        (10, 0.99, 8, 1, 8),
        (10, 0.99, 1, 3, 3),
        (5, 0.2, 8, 1, 5),
        (323, 0.0, 8, 1, 323),
    ],
)
def test_kept_count(c, r, round_to, floor, expected):
    assert kept_count(c, r, round_to, floor) == expected


def test_bad_ratios_are_clear():
    m = Mixed()
    g = analyze(m, torch.zeros(1, 3, 8, 8))
    with pytest.raises(UserError, match="no group named"):
        make_plan(m, g, {"nope": 0.5})
    with pytest.raises(UserError, match="cannot be pruned.*grouped conv"):
        make_plan(m, g, {"left": 0.5})
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        make_plan(m, g, 1.5)
    with pytest.raises(UserError, match="unknown importance"):
        make_plan(m, g, 0.5, importance="magic")


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "bn_scale", "random"])
def test_every_criterion_prunes(criterion):
    m = create("resnet56", width=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    assert prune(m, x, 0.5, importance=criterion)(x).shape == (2, 10)
