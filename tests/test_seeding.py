import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from qmixprune.seeding import seeded
from qmixprune.train import TrainConfig, train


def test_seeded_restores_the_callers_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7):
        inside = torch.rand(3)
    with seeded(7):
        assert torch.equal(torch.rand(3), inside)  # repeatable inside
    assert torch.equal(torch.rand(3), expected)  # the caller's stream goes on untouched


def _net() -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Dropout(0.5))
    net.append(nn.Linear(4 * 8 * 8, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net


def test_train_is_repeatable_and_leaves_the_global_rng_alone():
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(16, 3, 8, 8, generator=gen), torch.arange(16) % 2)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.01, seed=3)
    net_a, net_b = _net(), _net()  # building modules draws from the global RNG
    torch.manual_seed(99)
    before = torch.get_rng_state()
    a = train(net_a, data, cfg)
    assert torch.equal(torch.get_rng_state(), before)  # dropout drew from a fork
    b = train(net_b, data, cfg)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
