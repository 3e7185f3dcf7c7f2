import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from qmixprune.errors import UserError
from qmixprune.train import TrainConfig, conv_bn_pairs, targeted_dropout, train


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def test_targeted_dropout_drops_only_the_lowest_l1_channels_and_only_in_training():
    net = _net()
    conv, bn = conv_bn_pairs(net)[0]
    with torch.no_grad():  # filter i has L1 norm growing with i: channels 0-3 are the low half
        conv.weight.copy_(torch.arange(1, 9.0)[:, None, None, None].expand_as(conv.weight))
    hooks = targeted_dropout(net, p=1.0, fraction=0.5, gen=torch.Generator().manual_seed(0))
    x = torch.randn(4, 3, 6, 6)
    bn.train()
    out = bn(conv(x))
    assert out[:, :4].abs().sum() == 0  # p = 1: the low half is always dropped
    assert (out[:, 4:].abs().sum((2, 3)) > 0).all()
    bn.eval()
    assert (bn(conv(x)).abs().sum((2, 3)) > 0).all()  # never at inference
    for h in hooks:
        h.remove()
    for p, fraction in ((1.5, 0.5), (-0.1, 0.5), (0.5, 0.0)):
        with pytest.raises(UserError, match="targeted dropout needs"):
            targeted_dropout(net, p=p, fraction=fraction, gen=torch.Generator())


def test_training_with_targeted_dropout_removes_its_hooks_and_recalibrates_bn():
    net = _net()
    data = TensorDataset(torch.randn(64, 3, 6, 6), torch.randint(0, 2, (64,)))
    cfg = TrainConfig(epochs=1, batch_size=16, targeted_dropout=0.5)
    train(net, data, cfg, hflip=False)
    bn = net[1]
    assert not bn._forward_hooks
    # recalibrated after training on all 64 samples (4 equal batches): exactly their mean
    conv = net[0]
    with torch.no_grad():
        mean = conv(torch.stack([x for x, _ in data])).mean((0, 2, 3))
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
