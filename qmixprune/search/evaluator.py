"""The plan evaluator: what a plan is worth, for QMIX and every baseline alike.

A plan (kept channels per group) is pruned physically from the trained model, BatchNorm is
recalibrated on fixed calibration batches, and the pruned net is scored: accuracy (or
-loss) on fixed val batches by default, or the user's ``score`` (mAP, mIoU, ...). Rewards
are cached by plan, and the new plans of a batch are shared out across the ranks of a
torch.distributed group.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..device import to_device
from ..distributed import collective_device, rank_world
from ..errors import UserError
from ..graph import Graph
from ..pruning import apply_plan, plan_for_counts
from ..train import recalibrate_bn

Score = Callable[[nn.Module], float]  # higher is better


def val_score(val: list[tuple[torch.Tensor, torch.Tensor]], reward: str = "acc") -> Score:
    """The default reward: accuracy (``"acc"``) or negative mean cross-entropy (``"loss"``,
    smoother) on fixed ``(x, y)`` batches, which must already be on the model's device."""

    @torch.no_grad()
    def score(model: nn.Module) -> float:
        correct = total = 0
        loss = 0.0
        for x, y in val:
            out = model(x)
            correct += (out.argmax(1) == y).sum().item()
            loss += F.cross_entropy(out, y, reduction="sum").item()
            total += len(y)
        return correct / total if reward == "acc" else -loss / total

    return score


def calib_inputs(batches: Iterable, n: int, device: torch.device) -> list[torch.Tensor]:
    """The first ``n`` model inputs of ``batches`` (tensors, or batches whose first element
    is the input), moved to ``device`` once so that every candidate reuses them."""
    out = []
    for batch in itertools.islice(batches, n):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        out.append(to_device(x, device))
    if not out:
        raise UserError("no calibration batches: pass a non-empty calib or data with training data")
    return out


class PlanEvaluator:
    """Rewards of plans for one trained model: prune, recalibrate BN, score; cached."""

    def __init__(
        self,
        model: nn.Module,
        graph: Graph,
        ranking: dict[str, list[int]],
        calib: list[torch.Tensor],
        score: Score,
        device: torch.device,
        adaptive_bn: bool = True,
    ) -> None:
        self.model, self.graph, self.ranking = model, graph, ranking
        self.calib, self.score, self.device = calib, score, device
        self.adaptive_bn = adaptive_bn
        self.groups = [g.name for g in graph.prunable]
        self.cache: dict[tuple[int, ...], float] = {}
        self.evaluations = 0  # distinct plans scored, by all ranks together
        self.local_evaluations = 0  # of which this process scored

    def evaluate(self, counts: dict[str, int]) -> float:
        """Reward of one plan (kept channels per group)."""
        return self.evaluate_many([counts])[0]

    def evaluate_many(self, plans: list[dict[str, int]]) -> list[float]:
        """Rewards of several plans. Plans not yet in the cache are shared out across the
        ranks of a torch.distributed group (all ranks must call this together, as they do
        when they run the same seeded search) and the rewards gathered back to all."""
        keys = [tuple(p[g] for g in self.groups) for p in plans]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            rank, world = rank_world()
            # NCCL reduces only CUDA tensors: the values live on the group's device
            values = torch.zeros(len(todo), dtype=torch.float64, device=collective_device())
            for i, key in enumerate(todo):
                if i % world == rank:
                    values[i] = self._score(dict(zip(self.groups, key)))
                    self.local_evaluations += 1
            if world > 1:
                dist.all_reduce(values)
            self.cache.update(zip(todo, values.tolist()))
            self.evaluations += len(todo)
        return [self.cache[k] for k in keys]

    @torch.no_grad()
    def candidate(self, counts: dict[str, int]) -> nn.Module:
        """The plan as the reward sees it: pruned, BN-recalibrated, in eval mode, on the
        evaluation device (for scoring it elsewhere too, e.g. on test data)."""
        plan = plan_for_counts(self.graph, counts, self.ranking)
        pruned = apply_plan(self.model, self.graph, plan).to(self.device)
        if self.adaptive_bn:
            recalibrate_bn(pruned, self.calib, len(self.calib))
        return pruned.eval()

    @torch.no_grad()
    def _score(self, counts: dict[str, int]) -> float:
        pruned = self.candidate(counts)
        value = float(self.score(pruned))
        del pruned  # one pruned copy in memory at a time
        return value

    def reset(self) -> None:
        """Forget every reward (a fresh budget for the next method on the same model)."""
        self.cache, self.evaluations, self.local_evaluations = {}, 0, 0

    def state_dict(self) -> dict:
        return {"cache": list(self.cache.items()), "evaluations": self.evaluations}

    def load_state_dict(self, sd: dict) -> None:
        self.cache = {tuple(k): v for k, v in sd["cache"]}
        self.evaluations = sd["evaluations"]
