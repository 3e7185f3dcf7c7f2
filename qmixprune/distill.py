"""Knowledge-distillation fine-tuning: the unpruned model teaches the pruned one.

loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)
(+ feature_weight * MSE on matched layers, the teacher's features restricted to the
channels the student kept). Cosine LR, SGD with momentum or AdamW, AMP on CUDA, a
checkpoint every epoch, the best-on-val weights kept. Under ``torchrun`` it runs with
DistributedDataParallel (NCCL on GPUs, gloo on CPUs) and a DistributedSampler.
"""

from __future__ import annotations

import copy
import io
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
from .distributed import rank_world
from .errors import UserError
from .serialize import atomic_write_bytes
from .train import augment, evaluate

CHECKPOINT = "distill_checkpoint.pt"


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, nesterov) or "adamw"
    weight_decay: float = 5e-4
    temperature: float = 4.0
    alpha: float = 0.9  # 0 is plain cross-entropy fine-tuning
    feature_weight: float = 0.0
    amp: bool = True  # used on CUDA only
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise UserError("distill: epochs >= 0, batch_size >= 1 and lr > 0 are required")
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0:
            raise UserError("distill: alpha must be in [0, 1] and temperature > 0")
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


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: DataSplits,
    cfg: DistillConfig,
    out: str | Path | None = None,
    resume: bool = False,
    features: dict[str, torch.Tensor] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Fine-tune ``student`` against ``teacher``; returns the best-on-val student and the
    per-epoch history. ``features`` maps a module name to the teacher channels the
    student kept there (for feature distillation)."""
    cfg.validate()
    rank, world = rank_world()
    device = torch.device(
        f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    )
    torch.manual_seed(cfg.seed)
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
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=gen,
        drop_last=True,
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
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    aug = torch.Generator().manual_seed(cfg.seed + 1 + rank)
    hooks = _FeatureHooks(student, teacher, features) if cfg.feature_weight > 0 else None

    state = {
        "epoch": 0,
        "best_acc": -1.0,
        "best": copy.deepcopy(student.state_dict()),
        "history": [],
    }
    ckpt = Path(out) / CHECKPOINT if out is not None else None
    if resume and ckpt is not None and ckpt.is_file():
        sd = torch.load(ckpt, weights_only=True, map_location=device)
        student.load_state_dict(sd["student"])
        opt.load_state_dict(sd["opt"])
        sched.load_state_dict(sd["sched"])
        scaler.load_state_dict(sd["scaler"])
        gen.set_state(sd["gen"])
        aug.set_state(sd["aug"])
        state = {k: sd[k] for k in ("epoch", "best_acc", "best", "history")}
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        total = 0.0
        for x, y in loader:
            x, y = augment(x, aug, hflip=data.hflip).to(device), y.to(device)
            with torch.autocast(device.type, enabled=use_amp):
                with torch.no_grad():
                    t_out = teacher(x)
                s_out = model(x)
                loss = kd_loss(s_out, t_out, y, cfg.temperature, cfg.alpha)
                if hooks is not None:
                    loss = loss + cfg.feature_weight * hooks.loss()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += loss.item()
        if world > 1:
            _average_buffers(student, world)
        val_acc = evaluate(student, data.val)
        entry = {
            "epoch": epoch + 1,
            "loss": total / len(loader),
            "val_acc": val_acc,
            "lr": sched.get_last_lr()[0],
        }
        state["history"].append(entry)
        if val_acc > state["best_acc"]:
            state["best_acc"], state["best"] = val_acc, copy.deepcopy(student.state_dict())
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
            atomic_write_bytes(ckpt, buf.getvalue())
        if on_epoch is not None:
            on_epoch(entry)
    if hooks is not None:
        hooks.remove()
    student.load_state_dict(state["best"])
    return student.eval(), state["history"]


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
