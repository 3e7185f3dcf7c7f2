"""Candidate rewards for a pruned, BN-recalibrated plan, and how to tell whether one
predicts another.

``acc`` and ``loss`` score the candidate as it is; ``kl`` is the mean KL divergence of its
val predictions from the teacher's (negated: higher is better), which still moves when the
accuracy of a heavily pruned candidate sits near chance; ``distill`` is the val accuracy
after a few steps of distillation from the teacher on fixed training batches, the closest
cheap look at what fine-tuning will make of the plan (``benchmarks/reward_fidelity.py``
measures how well each predicts the fine-tuned accuracy).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distill import kd_loss

Score = Callable[[nn.Module], float]  # higher is better
REWARDS = ("acc", "loss", "kl", "distill")
Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def val_accuracy(model: nn.Module, val: Batches) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on fixed ``(x, y)`` batches."""
    model.eval()
    correct = total = 0
    for x, y in val:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / max(total, 1)


def kl_score(val: Batches, teacher_logits: Sequence[torch.Tensor]) -> Score:
    """Minus the mean KL(teacher || candidate) of the softmax outputs on ``val``'s inputs
    (``teacher_logits``: the teacher's outputs on the same batches, computed once)."""

    @torch.no_grad()
    def score(model: nn.Module) -> float:
        total, n = 0.0, 0
        for (x, _), t in zip(val, teacher_logits, strict=True):
            out = model(x).float()
            log_p, log_t = F.log_softmax(out, 1), F.log_softmax(t, 1)
            total += float(F.kl_div(log_p, log_t, reduction="sum", log_target=True))
            n += len(x)
        return -total / max(n, 1)

    return score


def short_distill(
    student: nn.Module,
    teacher: nn.Module,
    batches: Batches,
    steps: int,
    lr: float = 0.01,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> nn.Module:
    """``student`` trained in place for ``steps`` SGD steps of distillation from
    ``teacher``, cycling through the fixed ``batches`` (no augmentation, constant learning
    rate: the same few steps for every plan, so that their scores compare plans, not luck)."""
    if steps <= 0:
        return student.eval()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    student.train()
    teacher.eval()
    with torch.enable_grad():  # the evaluator scores plans under no_grad
        for i in range(steps):
            x, y = batches[i % len(batches)]
            with torch.no_grad():
                t_out = teacher(x)
            loss = kd_loss(student(x).float(), t_out.float(), y, temperature, alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return student.eval()


def distill_score(
    teacher: nn.Module, train: Batches, val: Batches, steps: int, lr: float = 0.01
) -> Score:
    """Val accuracy of a copy of the candidate after ``steps`` of ``short_distill`` on the
    fixed ``train`` batches (the candidate itself is left as it was)."""

    def score(model: nn.Module) -> float:
        student = copy.deepcopy(model)
        return val_accuracy(short_distill(student, teacher, train, steps, lr), val)

    return score


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b rank correlation of two equally long sequences (ties counted as
    neither concordant nor discordant); None with fewer than two pairs or no variation."""
    if len(a) != len(b):
        raise ValueError(f"kendall_tau: {len(a)} and {len(b)} values")
    conc = disc = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    denom = ((conc + disc + ties_a) * (conc + disc + ties_b)) ** 0.5
    return (conc - disc) / denom if denom > 0 else None
