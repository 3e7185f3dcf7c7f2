"""Per-channel parameters applied element-wise (layer scale) are cut with their channels."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from nets import randomize_bn
from test_grouped import masked_reference

from qmixprune import analyze, apply_plan, make_plan


class LayerScaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.last = nn.Conv2d(8, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.randn(8))  # timm style: reshaped where used
        self.shared = nn.Parameter(torch.randn(8, 1, 1))  # used twice: left alone
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + self.bn(self.conv(x)) * self.gamma.reshape(1, -1, 1, 1)
        y = F.relu(self.last(x)) * self.shared + self.shared
        return self.fc(y.mean((2, 3)))


def test_layer_scale_is_cut_with_its_channels():
    model = randomize_bn(LayerScaled()).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = analyze(model, x)
    stem = graph.group("stem")
    assert stem.prunable and "gamma" in [s.module for s in stem.slots]
    assert not graph.group("last").prunable  # `shared` is used twice
    plan = make_plan(model, graph, 0.5)
    pruned = apply_plan(model, graph, plan).eval()
    assert pruned.gamma.shape == (4,) and pruned.shared.shape == (8, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_reference(model, graph, plan)(x))
