"""The final pick: which of the search's best plans ``compress`` fine-tunes.

The search ranks plans by a cheap reward (the pruned net's val accuracy before any
training). Near a small budget that ranking says little about the fine-tuned model
(``benchmarks/reward_fidelity.py``), so the search's top-K distinct plans each get a short
distillation from the teacher and are scored on val; the better half goes on for as many
steps again, and so on (successive halving) until one is left. The Kendall tau between the
search's reward and the first round's scores is measured on the way: it says, in the run
itself, whether the search's reward predicted the distilled plans at this budget.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

from ..device import to_device
from ..errors import UserError
from .env import PruningEnv
from .rewards import kendall_tau, short_distill, val_accuracy

# below this tau the report says the search's reward did not predict the distilled plans
LOW_TAU = 0.3


@dataclass(frozen=True)
class PickConfig:
    """The final pick's settings (chosen on a setting the benchmarks do not report:
    docs/benchmarks-finetune.md)."""

    enabled: bool = True  # distil the search's top plans briefly and fine-tune the best
    top_k: int = 8  # distinct plans (the search's best by reward) entering the first round
    steps: int = 25  # distillation steps per plan and round (halving rounds: about 2*top_k*steps)
    batch_size: int = 64  # training batch of those steps
    lr: float = 0.01  # constant learning rate of those steps (SGD, nesterov momentum)
    val_batches: int = 8  # val batches of 256 that score each plan after each round

    def validate(self) -> None:
        if self.top_k < 1 or self.steps < 1 or self.batch_size < 1 or self.val_batches < 1:
            raise UserError("pick: top_k, steps, batch_size and val_batches must be >= 1")
        if self.lr <= 0:
            raise UserError(f"pick: lr must be > 0, got {self.lr}")


@dataclass
class PickResult:
    """The winner and how it was found."""

    counts: dict[str, int]  # the winning plan
    index: int  # its rank by the search's reward (0: the search's own best)
    candidates: list[dict]  # per plan: counts, search reward, scores after each round it ran
    tau: float | None  # Kendall tau: search reward vs first-round score over the candidates
    steps: int  # distillation steps spent, all plans together
    seconds: float
    rounds: int = 0
    notes: list[str] = field(default_factory=list)

    def low_tau(self) -> bool:
        return self.tau is not None and self.tau < LOW_TAU

    def summary(self) -> dict:
        return {
            "index": self.index,
            "tau": self.tau,
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "rounds": self.rounds,
            "candidates": self.candidates,
        }


def top_plans(env: PruningEnv, k: int) -> list[tuple[dict[str, int], float]]:
    """The ``k`` best distinct plans the search scored, best first (ties: first scored)."""
    ranked = sorted(env.cache.items(), key=lambda kv: -kv[1])[:k]
    return [(dict(zip(env.groups, key)), reward) for key, reward in ranked]


def pick(
    env: PruningEnv,
    teacher: nn.Module,
    data,
    cfg: PickConfig,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> PickResult:
    """Successive halving over the search's top ``cfg.top_k`` plans (see the module
    docstring); ``data`` a ``DataSplits`` (train feeds the steps, val scores them)."""
    from ..train import loader

    cfg.validate()
    start = clock()
    device = env.evaluator.device
    plans = top_plans(env, cfg.top_k)
    if not plans:
        raise UserError("the search scored no plan: nothing to pick from")
    rounds = max(1, math.ceil(math.log2(len(plans)))) if len(plans) > 1 else 0
    batches = loader(data.train, cfg.batch_size, shuffle=True, seed=seed + 2, drop_last=True)
    train = [to_device(b, device) for b in itertools.islice(batches, cfg.steps * max(rounds, 1))]
    if not train:
        raise UserError(f"the training set is smaller than one pick batch ({cfg.batch_size})")
    val = [
        to_device(b, device)
        for b in itertools.islice(loader(data.val, 256, False), cfg.val_batches)
    ]
    candidates = [{"counts": c, "search_reward": r, "scores": []} for c, r in plans]
    if rounds == 0:
        return PickResult(plans[0][0], 0, candidates, None, 0, clock() - start)
    students = {i: None for i in range(len(plans))}
    alive, steps = list(range(len(plans))), 0
    teacher = teacher.eval()
    for r in range(rounds):
        # round r's own batches; a small training set is cycled through
        chunk = [train[(r * cfg.steps + j) % len(train)] for j in range(cfg.steps)]
        for i in alive:
            student = students[i]
            if student is None:
                student = copy.deepcopy(env.evaluator.candidate(plans[i][0]))
            students[i] = short_distill(student, teacher, chunk, cfg.steps, cfg.lr)
            candidates[i]["scores"].append(val_accuracy(students[i], val))
            steps += cfg.steps
        # ties keep the search's order: the search's reward breaks them
        alive = sorted(alive, key=lambda i: (-candidates[i]["scores"][-1], i))
        for i in alive[(len(alive) + 1) // 2 :]:
            students[i] = None  # free the losers' copies
        alive = alive[: (len(alive) + 1) // 2] if r < rounds - 1 else alive[:1]
    first = [c["scores"][0] for c in candidates]
    tau = kendall_tau([c["search_reward"] for c in candidates], first)
    winner = alive[0]
    return PickResult(plans[winner][0], winner, candidates, tau, steps, clock() - start, rounds)


def low_tau_warning(res: PickResult) -> str:
    """The report's line when the search's reward did not predict the distilled plans."""
    return (
        f"the search's reward did not predict the briefly distilled models at this budget "
        f"(Kendall tau {res.tau:.2f} over its top {len(res.candidates)} plans, below "
        f"{LOW_TAU}): the plan fine-tuned is the pick's (plan {res.index} by the search's "
        "reward); --plan uniform costs no search and may do as well"
    )
