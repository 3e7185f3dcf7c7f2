"""Training, evaluation and adaptive BatchNorm recalibration on in-memory data sets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .device import module_device, to_device
from .errors import UserError
from .seeding import seeded


def loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int = 0, **kw) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, **kw)


@torch.no_grad()
def accuracy(
    model: nn.Module,
    data: DataLoader | Dataset,
    max_batches: int | None = None,
    batch_size: int = 256,
    device: torch.device | None = None,
) -> float:
    """Top-1 accuracy as a fraction, in eval mode (the model's mode is restored). Batches
    are moved to ``device`` (default: where the model's parameters are)."""
    if isinstance(data, Dataset):
        data = loader(data, batch_size, shuffle=False)
    device = device if device is not None else module_device(model)
    was = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    for i, (x, y) in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        x, y = to_device((x, y), device)
        correct += (model(x).argmax(1) == y).sum()  # summed on the device: one sync at the end
        total += len(y)
    model.train(was)
    return correct.item() / max(total, 1)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterator | list, num_batches: int = 8) -> nn.Module:
    """Adaptive BN: reset running statistics and re-estimate them on a few training batches
    (moved to the model's device).

    After pruning, the stored statistics no longer describe the thinner layers' inputs.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    device = module_device(model)
    was = model.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for i, batch in enumerate(batches):
        if i >= num_batches:
            break
        model(to_device(batch[0] if isinstance(batch, (list, tuple)) else batch, device))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was)
    return model


def augment(x: torch.Tensor, gen: torch.Generator, shift: int = 4, hflip: bool = True):
    """Random translation by up to ``shift`` pixels (zero padding) and optional h-flips.

    The random draws come from ``gen`` on the CPU whatever ``x``'s device, so a run makes the
    same augmentations on a GPU as on the CPU; only the index tensors move to ``x``."""
    n, _, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (shift, shift, shift, shift))
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen).to(dev)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    out = padded.gather(2, rows.expand(n, x.shape[1], h, w + 2 * shift))
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    out = out.gather(3, cols.expand(n, x.shape[1], h, w))
    if hflip:
        flip = (torch.rand(n, generator=gen) < 0.5).to(dev)
        # a select, not a boolean index: no host sync on a GPU
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0  # soft targets: less confident logits, which prune better
    # Targeted dropout (Gomez et al., 2019): in every conv + BN pair, each sample drops each
    # of the ``targeted_fraction`` lowest-L1 filters' channels with this probability, so
    # the network learns not to rely on the filters L1 pruning removes first. 0: off.
    targeted_dropout: float = 0.0
    targeted_fraction: float = 0.5
    seed: int = 0


def train(
    model: nn.Module,
    train_set: Dataset,
    cfg: TrainConfig,
    hflip: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
    device: torch.device | None = None,
) -> nn.Module:
    """Plain supervised training: SGD with momentum, one-cycle LR, random shifts; the model
    and its batches on ``device`` (default: where the model's parameters are)."""
    with seeded(cfg.seed):  # dropout draws from the global RNG: repeatable, caller's RNG kept
        return _train(model, train_set, cfg, hflip, on_epoch, device)


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Each BatchNorm2d with the Conv2d registered just before it, when their widths
    match (the conv -> BN order of a plain CNN's modules; other layouts are skipped)."""
    pairs, last = [], None
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            last = m
        elif isinstance(m, nn.BatchNorm2d):
            if last is not None and last.out_channels == m.num_features:
                pairs.append((last, m))
            last = None
    return pairs


def targeted_dropout(model: nn.Module, p: float, fraction: float, gen: torch.Generator):
    """Forward hooks (returned; remove them after training) that, in training mode, zero
    each of the ``fraction`` lowest-L1 filters' BN outputs per sample with probability
    ``p``. The draws come from ``gen`` on the CPU, as in ``augment``."""
    if not (0.0 <= p <= 1.0 and 0.0 < fraction <= 1.0):
        raise UserError(
            f"targeted dropout needs 0 <= targeted_dropout <= 1 and 0 < targeted_fraction <= 1, "
            f"got {p} and {fraction}"
        )

    def hook_for(conv: nn.Conv2d):
        def hook(bn, inputs, out):
            k = int(fraction * out.shape[1])
            if not bn.training or k == 0:
                return out
            # L1 norms as L1 pruning ranks them (ops.filter_norms), summed here in float32 by
            # torch: the native kernel's summation order flips near-ties, and one flipped mask
            # trains another teacher than the one docs/benchmarks.md measured
            low = conv.weight.detach().abs().flatten(1).sum(1).argsort()[:k]
            mask = torch.ones(out.shape[:2], device=out.device, dtype=out.dtype)
            mask[:, low] = (torch.rand(out.shape[0], k, generator=gen) >= p).to(out)
            return out * mask[:, :, None, None]

        return hook

    return [bn.register_forward_hook(hook_for(conv)) for conv, bn in conv_bn_pairs(model)]


def _train(model, train_set, cfg, hflip, on_epoch, device) -> nn.Module:
    device = device if device is not None else module_device(model)
    model.to(device)
    if cfg.targeted_dropout > 0:
        hooks = targeted_dropout(
            model,
            cfg.targeted_dropout,
            cfg.targeted_fraction,
            torch.Generator().manual_seed(cfg.seed + 1),
        )
        try:
            _epochs(model, train_set, cfg, hflip, on_epoch, device)
        finally:
            for h in hooks:
                h.remove()
        # the running statistics saw the dropped channels; the model runs with all of them
        recalibrate_bn(model, loader(train_set, cfg.batch_size, True, cfg.seed), 16)
        return model.eval()
    return _epochs(model, train_set, cfg, hflip, on_epoch, device)


def _epochs(model, train_set, cfg, hflip, on_epoch, device) -> nn.Module:
    data = loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * len(data))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for epoch in range(cfg.epochs):
        total = torch.zeros((), device=device)
        for x, y in data:
            x, y = to_device((x, y), device)
            out = model(augment(x, gen, hflip=hflip))
            loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach()
        if on_epoch is not None:
            on_epoch(epoch, total.item() / max(1, len(data)))
    return model.eval()
