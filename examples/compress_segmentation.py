"""Compress a segmentation model with the task API: your model class, your metric (mIoU)
as the search's reward, your loss (+ distillation of the logits) for fine-tuning.

The script makes its own data set (squares, discs and triangles, each class of its own
jittered hue, on noisy muted gradient backgrounds; 4 classes with the background), trains
a small encoder-decoder segmenter (or torchvision's LRASPP-MobileNetV3, no pretrained
weights, with ``--model lraspp``), compresses it to half of its MACs, and restores the
saved result onto a fresh instance of the class, without pickle.

    python examples/compress_segmentation.py [--out OUT] [--model tiny|lraspp]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import qmixprune
from qmixprune.data import DataSplits
from qmixprune.distill import DistillConfig
from qmixprune.run.config import CompressConfig
from qmixprune.search import EnvConfig, SearchConfig

CLASSES = ("background", "square", "disc", "triangle")
# each class's colour tends to its own hue (with jitter); the shape tells the rest
PALETTE = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.3, 0.2], [0.2, 0.8, 0.3], [0.25, 0.35, 0.9]])


def make_shapes(n: int, size: int, gen: torch.Generator) -> TensorDataset:
    """``n`` images [3, size, size] in [-1, 1] with 1-3 shapes each (squares, discs,
    triangles in jittered class colours on muted gradients), and their masks."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    yy, xx = yy.float() / size, xx.float() / size
    images = torch.empty(n, 3, size, size)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        a, b = 0.25 + 0.5 * torch.rand(2, 3, 1, 1, generator=gen)  # background: a muted
        # colour gradient + noise
        angle = torch.rand(1, generator=gen).item() * 2 * math.pi
        ramp = (math.cos(angle) * xx + math.sin(angle) * yy).clamp(0, 1)
        img = a + (b - a) * ramp + 0.08 * torch.randn(3, size, size, generator=gen)
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            kind = int(torch.randint(1, 4, (1,), generator=gen))
            cy, cx = (torch.rand(2, generator=gen) * 0.7 + 0.15).tolist()
            r = (torch.rand(1, generator=gen).item() * 0.12) + 0.08
            if kind == 1:
                inside = ((yy - cy).abs() < r) & ((xx - cx).abs() < r)
            elif kind == 2:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            else:  # apex up: below the apex and inside the two slanted edges
                inside = (yy < cy + r) & ((xx - cx).abs() < (yy - (cy - r)) * 0.6)
            colour = PALETTE[kind] + 0.3 * (torch.rand(3, generator=gen) - 0.5)
            img[:, inside] = colour[:, None]
            masks[i][inside] = kind
        images[i] = img.clamp(0, 1) * 2 - 1
    return TensorDataset(images, masks)


def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class TinySeg(nn.Module):
    """A small U-Net-like segmenter: three encoder stages, two decoder stages with skips."""

    def __init__(self, num_classes: int = len(CLASSES), width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(block(3, w), block(w, w))
        self.enc2 = nn.Sequential(block(w, 2 * w, 2), block(2 * w, 2 * w))
        self.enc3 = nn.Sequential(block(2 * w, 4 * w, 2), block(4 * w, 4 * w))
        self.dec2 = block(6 * w, 2 * w)
        self.dec1 = block(3 * w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1))
        return self.head(d1)


def lraspp() -> nn.Module:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    return lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4)


def logits(out) -> torch.Tensor:
    """torchvision's segmenters return {"out": logits}; ours returns the logits."""
    return out["out"] if isinstance(out, dict) else out


@torch.no_grad()
def miou(model: nn.Module, batches: list) -> float:
    """Mean intersection over union across the classes present (model in eval mode)."""
    was = model.training
    model.eval()
    k = len(CLASSES)
    confusion = torch.zeros(k, k, dtype=torch.long)
    for x, y in batches:
        pred = logits(model(x)).argmax(1)
        confusion += torch.bincount(y.flatten() * k + pred.flatten(), minlength=k * k).view(k, k)
    model.train(was)
    tp = confusion.diag().float()
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    present = union > 0
    return (tp[present] / union[present]).mean().item()


def seg_kd_step(student, teacher, batch, temperature: float = 2.0, alpha: float = 0.5):
    """Cross-entropy on the masks + per-pixel distillation of the teacher's logits."""
    x, y = batch
    s = logits(student(x))
    with torch.no_grad():
        t = logits(teacher(x))
    kd = F.kl_div(
        F.log_softmax(s / temperature, 1),
        F.log_softmax(t / temperature, 1),
        reduction="none",
        log_target=True,
    )
    kd = kd.sum(1).mean() * temperature**2
    return alpha * kd + (1 - alpha) * F.cross_entropy(s, y)


def train_teacher(model: nn.Module, train: TensorDataset, epochs: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    data = DataLoader(train, batch_size=16, shuffle=True, generator=gen, drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-2, total_steps=epochs * len(data))
    model.train()
    for _ in range(epochs):
        for x, y in data:
            loss = F.cross_entropy(logits(model(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="segmentation-out")
    p.add_argument("--model", choices=("tiny", "lraspp"), default="tiny")
    p.add_argument("--size", type=int, default=32, help="image side (pixels)")
    p.add_argument("--train", type=int, default=384, help="training images")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--target-flops", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    train = make_shapes(args.train, args.size, gen)
    val, test = make_shapes(128, args.size, gen), make_shapes(128, args.size, gen)
    data = DataSplits(train, val, test, len(CLASSES), (3, args.size, args.size), hflip=False)
    val_batches = list(DataLoader(val, batch_size=64))
    test_batches = list(DataLoader(test, batch_size=64))

    build = TinySeg if args.model == "tiny" else lraspp
    torch.manual_seed(args.seed)
    teacher = train_teacher(build(), train, args.teacher_epochs, args.seed)
    print(
        f"teacher trained in {time.perf_counter() - start:.0f} s: val mIoU "
        f"{miou(teacher, val_batches):.4f}, test mIoU {miou(teacher, test_batches):.4f}"
    )

    config = CompressConfig(
        search=SearchConfig(episodes=args.episodes, env=EnvConfig(calib_batches=4)),
        distill=DistillConfig(
            epochs=args.finetune_epochs,
            batch_size=16,
            lr=args.finetune_lr,
            optimizer="adamw",
            weight_decay=1e-4,
        ),
        seed=args.seed,
        bench_runs=10,
    )
    result = qmixprune.compress(
        teacher,
        data,
        target_flops=args.target_flops,
        config=config,
        out=args.out,
        score=lambda m: miou(m, val_batches),  # the search's reward, the best epoch's pick
        train_step=seg_kd_step,  # the fine-tuning loss
        calib=(x for x, _ in DataLoader(train, batch_size=32)),  # BatchNorm recalibration
    )

    # restore onto a fresh instance of the class: no pickle, the plan is in the file
    restored = qmixprune.load(f"{args.out}/model.safetensors", model=build())
    x = torch.stack([test[i][0] for i in range(4)])
    same = torch.equal(logits(restored(x)), logits(result.model.eval()(x)))
    print(
        f"MACs {result.original['macs']:,} -> {result.pruned['macs']:,} "
        f"({result.pruned['macs'] / result.original['macs']:.3f}); test mIoU "
        f"{miou(teacher, test_batches):.4f} -> {miou(restored, test_batches):.4f}; "
        f"restored from {args.out}/model.safetensors with equal outputs: {same}; "
        f"{time.perf_counter() - start:.0f} s in all"
    )


if __name__ == "__main__":
    main()
