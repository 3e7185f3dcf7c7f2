"""Small models that exercise every dependency rule of the graph."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixed(nn.Module):
    """Residual add, squeeze-excitation, concat, depthwise, grouped conv, flatten -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.b1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b1_bn = nn.BatchNorm2d(8)
        self.se1 = nn.Conv2d(8, 4, 1)
        self.se2 = nn.Conv2d(4, 8, 1)
        self.left = nn.Conv2d(8, 6, 1)
        self.right = nn.Conv2d(8, 4, 1)
        self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.dw_bn = nn.BatchNorm2d(10)
        self.grouped = nn.Conv2d(10, 12, 3, padding=1, groups=2)
        self.last = nn.Conv2d(12, 6, 3, padding=1)
        self.head = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.relu(self.b1_bn(self.b1(x)) + x)
        s = torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1)))))
        x = x * s
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        x = F.relu(self.dw_bn(self.dw(x)))
        x = F.relu(self.grouped(x))
        x = F.adaptive_avg_pool2d(self.last(x), 2)
        return self.head(x.view(x.size(0), -1))


class Concat(nn.Module):
    """Two prunable branches joined by concat, then BN and a conv that reads both."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(10, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        x = F.relu(self.c(x)).mean((2, 3))
        return self.fc(x)


class UnknownOp(nn.Module):
    """torch.roll over channels cannot be reasoned about; the rest stays prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = torch.roll(F.relu(self.c1(x)), 1, dims=1)
        x = F.relu(self.c3(F.relu(self.c2(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.c(x)
        return self.c(-x)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so exactness tests mean something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def fixed_timer(modules, shape, slow=3.0, multiple=4):
    """Fixed timings: 1 ns per MAC, ``slow`` times that for a layer with a channel count that
    is not a multiple of ``multiple`` (the image's 3 channels and the 10 classes included:
    the same in every plan), plus 10 us per whole model (not per layer timed alone)."""
    import numpy as np

    layer_types = (torch.nn.Conv2d, torch.nn.Linear)

    def ms(module):
        total = [0.0 if isinstance(module, layer_types) else 0.01]

        def hook(m, inputs, out):
            ci = m.in_features if isinstance(m, torch.nn.Linear) else m.in_channels
            co = m.out_features if isinstance(m, torch.nn.Linear) else m.out_channels
            macs = out[0].numel() * m.weight[0].numel()
            total[0] += macs * 1e-6 * (slow if ci % multiple or co % multiple else 1.0)

        hooks = [
            m.register_forward_hook(hook) for m in module.modules() if isinstance(m, layer_types)
        ]
        with torch.no_grad():
            module.eval()(torch.zeros(*shape))
        for h in hooks:
            h.remove()
        return total[0]

    return [np.array([ms(m)] * 3) for m in modules]


class ConvAct(nn.Sequential):
    """Conv -> BN -> SiLU, the block YOLO models are made of."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__(nn.Conv2d(c1, c2, k, s, k // 2, bias=False), nn.BatchNorm2d(c2), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvAct(c, c, 3), ConvAct(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2fLike(nn.Module):
    """YOLOv8's C2f: a conv's output chunked in two halves, bottlenecks on the second, all
    pieces concatenated. ``list(...)`` over the chunk is what torch.fx cannot trace."""

    def __init__(self, c1: int, c2: int, n: int = 1) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = ConvAct(c1, 2 * self.c)
        self.cv2 = ConvAct((2 + n) * self.c, c2)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPFLike(nn.Module):
    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvAct(c1, c1 // 2), ConvAct(c1 * 2, c2)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.pool(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class YoloLike(nn.Module):
    """A small detector in YOLOv8's shape: backbone of C2f blocks, SPPF, an upsampling neck
    and a detect-like head per scale whose output convs (4 box + ``nc`` class channels)
    keep their widths."""

    def __init__(self, nc: int = 3) -> None:
        super().__init__()
        self.stem = ConvAct(3, 8, 3, 2)
        self.down1 = ConvAct(8, 16, 3, 2)
        self.c2f1 = C2fLike(16, 16, 1)
        self.down2 = ConvAct(16, 32, 3, 2)
        self.c2f2 = C2fLike(32, 32, 2)
        self.sppf = SPPFLike(32, 32)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.c2f3 = C2fLike(48, 16, 1)
        self.box = nn.ModuleList(
            nn.Sequential(ConvAct(c, 16, 3), nn.Conv2d(16, 4, 1)) for c in (16, 32)
        )
        self.cls = nn.ModuleList(
            nn.Sequential(ConvAct(c, 16, 3), nn.Conv2d(16, nc, 1)) for c in (16, 32)
        )

    def forward(self, x):
        p3 = self.c2f1(self.down1(self.stem(x)))
        p4 = self.sppf(self.c2f2(self.down2(p3)))
        p3 = self.c2f3(torch.cat([self.up(p4), p3], 1))
        return [torch.cat([b(f), c(f)], 1) for f, b, c in zip((p3, p4), self.box, self.cls)]


class HalvesNet(nn.Module):
    """A chunk that torch.fx traces (unpacked at once) and a split at literal sizes."""

    def __init__(self, literal: bool = False) -> None:
        super().__init__()
        self.literal = literal
        self.a = ConvAct(3, 8, 3)
        self.left, self.right = ConvAct(4, 6, 3), ConvAct(4, 6, 3)
        self.out = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        x = self.a(x)
        lo, hi = x.split((4, 4), 1) if self.literal else x.chunk(2, 1)
        hi = hi * hi.mean((2, 3), keepdim=True)
        return self.out(torch.cat([self.left(lo), self.right(hi)], 1))


class UpNet(nn.Module):
    """A segmentation-head shape: conv, a stride-2 transposed conv upsampling, conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = ConvAct(3, 8, 3, 2)
        self.up = nn.ConvTranspose2d(8, 6, 2, 2, bias=True)
        self.bn = nn.BatchNorm2d(6)
        self.out = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.out(F.silu(self.bn(self.up(self.a(x)))))


class GhostSlice(nn.Module):
    """GhostNet's module: two convs concatenated, then ``[:, :stop]`` (all of them when
    ``stop`` is their width)."""

    def __init__(self, stop: int = 8) -> None:
        super().__init__()
        self.stop = stop
        self.primary, self.cheap = ConvAct(3, 4, 3), ConvAct(3, 4, 3)
        self.out = nn.Conv2d(stop, 2, 1)

    def forward(self, x):
        return self.out(torch.cat([self.primary(x), self.cheap(x)], 1)[:, : self.stop])


class SplitSizes(nn.Module):
    """Splits at sizes held by the module: MixNet's list (``self.splits``, every piece its
    own conv) or C2PSA's one int (``self.c``, two equal halves)."""

    def __init__(self, one_int: bool = False) -> None:
        super().__init__()
        self.one_int = one_int
        self.splits, self.c = [3, 5], 4
        self.a = ConvAct(3, 8, 3)
        self.p0 = ConvAct(4 if one_int else 3, 4, 3)
        self.p1 = ConvAct(4 if one_int else 5, 4, 3)
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        x = self.a(x)
        lo, hi = x.split((self.c, self.c), 1) if self.one_int else torch.split(x, self.splits, 1)
        return self.out(torch.cat([self.p0(lo), self.p1(hi), x], 1))


class GhostAdd(nn.Module):
    """A concat of two convs (4 + 4 channels) added to one conv's 8: the sum ties them run
    by run once the 8 are cut in two."""

    def __init__(self) -> None:
        super().__init__()
        self.p, self.q, self.short = ConvAct(3, 4, 3), ConvAct(3, 4, 3), ConvAct(3, 8, 1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(torch.cat([self.p(x), self.q(x)], 1) + self.short(x))
