"""Knowledge-distillation fine-tuning: the unpruned model teaches the pruned one.

loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)
(+ feature_weight * MSE on matched layers, the teacher's features restricted to the
channels the student kept). Cosine LR, SGD with momentum or AdamW, AMP on CUDA, a
checkpoint every epoch, the best-on-val weights kept. Under ``torchrun`` it runs with
DistributedDataParallel (NCCL on GPUs, gloo on CPUs) and a DistributedSampler; the batch size
is the global batch, split among the processes, so the learning rate needs no rescaling.
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .data import DataSplits
from .device import device_context, module_device, to_device
from .distributed import rank_world
from .errors import UserError
from .files import write_bytes
from .seeding import seeded
from .train import accuracy, augment


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 10  # fine-tuning epochs (the best-on-val epoch is kept)
    batch_size: int = 64  # the global batch: torchrun's N processes take batch_size / N each
    lr: float = 0.01  # peak learning rate, cosine-annealed to 0
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, nesterov) or "adamw"
    weight_decay: float = 5e-4  # L2 weight decay
    temperature: float = 4.0  # softmax temperature T of the distillation term
    alpha: float = 0.9  # 0 is plain cross-entropy fine-tuning
    feature_weight: float = 0.0  # weight of feature distillation (MSE on matched layers); 0 is off
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16); off on CPU
    seed: int = 0  # seeds shuffling and augmentation (compress sets it from its own seed)

    def validate(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise UserError("distill: epochs >= 0, batch_size >= 1 and lr > 0 are required")
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0:
            raise UserError("distill: alpha must be in [0, 1] and temperature > 0")
        per_rank_batch(self.batch_size, _world_size())  # before any work, under torchrun
        if self.optimizer not in ("sgd", "adamw"):
            raise UserError(f"distill: optimizer must be 'sgd' or 'adamw', not {self.optimizer!r}")


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """Hinton's distillation loss; T^2 keeps the soft term's gradients on the CE's scale."""
    ce = F.cross_entropy(student_logits, labels)
    if alpha == 0:
        return ce
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / t, 1),
        F.log_softmax(teacher_logits / t, 1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * t * t * kl + (1 - alpha) * ce


def _world_size() -> int:
    """Processes of this run: the group's size, or torchrun's WORLD_SIZE before it is joined."""
    _, world = rank_world()
    return world if world > 1 else int(os.environ.get("WORLD_SIZE", "1"))


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype for ``device``: bf16 on CUDA GPUs that support it, else fp16 (which
    needs a GradScaler); None (full precision) on the CPU or when AMP is off."""
    if not enabled or device.type != "cuda":
        return None
    # bf16 needs compute capability 8.0 (Ampere) or later, asked of this device: under
    # torchrun the current device may not be the one the model is on
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def per_rank_batch(batch_size: int, world: int) -> int:
    """Each process's share of the global batch ``batch_size``.

    The scaling rule: ``DistillConfig.batch_size`` and ``lr`` describe the whole run, so torchrun
    with N processes takes the same number of optimizer steps with the same global batch and
    learning rate as one process (N processes used to run N times the batch at the same lr,
    with 1/N of the steps, and ended less accurate)."""
    if batch_size % world:
        raise UserError(
            f"distill: batch_size {batch_size} is the global batch and must divide evenly among "
            f"the {world} torchrun processes; use a multiple of {world}"
        )
    return batch_size // world


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: DataSplits,
    cfg: DistillConfig,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
    *,
    features: dict[str, torch.Tensor] | None = None,
    device: torch.device | None = None,
    train_step: Callable[[nn.Module, nn.Module, object], torch.Tensor] | None = None,
    score: Callable[[nn.Module], float] | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Fine-tune ``student`` against ``teacher``; returns the best student on val (the one
    that came in when no epoch beats it) and the per-epoch history.

    ``device`` (from ``device.resolve``; default: the student's device) takes both models and
    every batch. ``train_step(student, teacher, batch)`` replaces the classification KD loss:
    it gets the batch already on the device (under autocast when AMP is on; ``student`` is the
    DDP wrapper under torchrun) and returns the loss. ``score(student)`` (higher is better)
    replaces validation accuracy for picking the best epoch; the history's ``val`` and
    ``val_acc`` hold the value used. ``features`` maps a module name to the teacher channels
    the student kept there (for feature distillation). Under torchrun ``cfg.batch_size`` is the
    global batch (see ``per_rank_batch``). ``checkpoint``: a file written after every epoch,
    which ``resume`` continues from."""
    on = device if device is not None else module_device(student)
    # seeded: dropout draws from the global RNG (repeatable, the caller's RNG kept);
    # device_context: the DataLoader's pin-memory thread and CUDA calls use the current GPU
    with seeded(cfg.seed), device_context(on):
        return _distill(
            student,
            teacher,
            data,
            cfg,
            checkpoint,
            resume,
            on_epoch,
            features,
            device,
            train_step,
            score,
        )


def _distill(
    student, teacher, data, cfg, checkpoint, resume, on_epoch, features, device, train_step, score
) -> tuple[nn.Module, list[dict]]:
    cfg.validate()
    rank, world = rank_world()
    device = device if device is not None else module_device(student)
    local_batch = per_rank_batch(cfg.batch_size, world)
    student, teacher = student.to(device), teacher.to(device).eval()
    model = student
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = (
        DistributedSampler(data.train, world, rank, shuffle=True, seed=cfg.seed, drop_last=True)
        if world > 1
        else None
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        data.train,
        batch_size=local_batch,
        shuffle=sampler is None,
        sampler=sampler,
        generator=gen,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    if len(loader) == 0:
        raise UserError(f"the training set ({len(data.train)} samples) is smaller than a batch")
    params = [p for p in student.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.epochs * len(loader)))
    dtype = amp_dtype(device, cfg.amp)
    # bf16 keeps fp32's exponent range: only fp16 needs its gradients scaled
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    aug = torch.Generator().manual_seed(cfg.seed + 1 + rank)
    hooks = _FeatureHooks(student, teacher, features) if cfg.feature_weight > 0 else None

    def _score(m: nn.Module) -> float:
        return float(score(m.eval()) if score is not None else accuracy(m, data.val))

    state = {
        "epoch": 0,
        "best_acc": float("-inf"),
        "best_epoch": -1,
        "best": copy.deepcopy(student.state_dict()),
        "history": [],
    }
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt is not None and ckpt.is_file():
        try:
            sd = torch.load(ckpt, weights_only=True, map_location=device)
        except Exception as exc:  # truncated by a full disk or a copy: say so in one line
            raise UserError(
                f"{ckpt} is damaged ({type(exc).__name__}): delete it to redo the fine-tuning, "
                "or start afresh with --overwrite"
            ) from exc
        student.load_state_dict(sd["student"])
        opt.load_state_dict(sd["opt"])
        sched.load_state_dict(sd["sched"])
        if sd["scaler"] and scaler.is_enabled():  # empty when saved without fp16 scaling
            scaler.load_state_dict(sd["scaler"])
        # generator states are CPU byte tensors whatever map_location did to them
        gen.set_state(sd["gen"].cpu())
        aug.set_state(sd["aug"].cpu())
        state = {k: sd[k] for k in ("epoch", "best_acc", "best", "history")}
        state["best_epoch"] = sd.get("best_epoch", -1)
    if state["epoch"] == 0 and cfg.epochs > 0:
        # the student as it came in is a candidate too: fine-tuning that only makes it
        # worse on val (too high a learning rate, a task loss that does not fit) returns
        # it unchanged; an epoch that ties it is preferred
        state["best_acc"] = _score(student)
        state["best_epoch"] = 0
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        total = torch.zeros((), device=device)  # summed on the device: no sync per step
        for batch in loader:
            batch = to_device(batch, device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                if train_step is not None:
                    loss = train_step(model, teacher, batch)
                else:
                    loss = _kd_step(model, teacher, batch, aug, data.hflip, cfg)
                if hooks is not None:
                    loss = loss + cfg.feature_weight * hooks.loss()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += loss.detach().float()
        if world > 1:
            _average_buffers(student, world)
        val = _score(student)
        entry = {
            "epoch": epoch + 1,
            "loss": total.item() / len(loader),
            "val": val,
            "val_acc": val,
            "lr": sched.get_last_lr()[0],
        }
        state["history"].append(entry)
        if val > state["best_acc"] or (val == state["best_acc"] and state["best_epoch"] == 0):
            state["best_acc"], state["best"] = val, copy.deepcopy(student.state_dict())
            state["best_epoch"] = epoch + 1
        state["epoch"] = epoch + 1
        if ckpt is not None and rank == 0:
            buf = io.BytesIO()
            torch.save(
                {
                    **state,
                    "student": student.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "scaler": scaler.state_dict(),
                    "gen": gen.get_state(),
                    "aug": aug.get_state(),
                },
                buf,
            )
            write_bytes(ckpt, buf.getvalue())
        if on_epoch is not None:
            on_epoch(entry)
    if hooks is not None:
        hooks.remove()
    student.load_state_dict(state["best"])
    return student.eval(), state["history"]


def _kd_step(model, teacher, batch, aug: torch.Generator, hflip: bool, cfg: DistillConfig):
    """The default step: classification KD on an augmented (x, y) batch."""
    x, y = batch
    x = augment(x, aug, hflip=hflip)
    with torch.no_grad():
        t_out = teacher(x)
    s_out = model(x)
    # the loss in fp32: softmax over low-precision logits loses the soft targets' tails
    return kd_loss(s_out.float(), t_out.float(), y, cfg.temperature, cfg.alpha)


def _average_buffers(model: nn.Module, world: int) -> None:
    """DDP keeps parameters in step; BN running statistics drift apart after the last
    broadcast. Average them so every rank ends with the same model."""
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world)


class _FeatureHooks:
    """Captures matched layers' outputs; MSE of student vs teacher's kept channels."""

    def __init__(self, student, teacher, features: dict[str, torch.Tensor] | None) -> None:
        if not features:
            raise UserError("feature distillation needs layers to match (features=...)")
        self.index = features
        self.s: dict[str, torch.Tensor] = {}
        self.t: dict[str, torch.Tensor] = {}
        s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
        missing = [n for n in features if n not in s_mods or n not in t_mods]
        if missing:
            raise UserError(f"feature distillation: no module {missing} in both models")
        self.handles = [s_mods[n].register_forward_hook(self._keep(self.s, n)) for n in features]
        self.handles += [t_mods[n].register_forward_hook(self._keep(self.t, n)) for n in features]

    @staticmethod
    def _keep(store, name):
        def hook(mod, inp, out):
            store[name] = out

        return hook

    def loss(self) -> torch.Tensor:
        terms = [
            F.mse_loss(self.s[n], self.t[n].index_select(1, idx.to(self.t[n].device)).detach())
            for n, idx in self.index.items()
        ]
        return sum(terms) / len(terms)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
