"""The plan evaluator: what a plan is worth, for QMIX and every baseline alike.

A plan (kept channels per group) is pruned physically from the trained model, BatchNorm is
recalibrated on fixed calibration batches, and the pruned net is scored: accuracy (or
-loss) on fixed val batches by default, or the user's ``score`` (mAP, mIoU, ...). Rewards
are cached by plan, and the new plans of a batch are shared out across the ranks of a
torch.distributed group.
"""

from __future__ import annotations

import copy
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


def runs_channels_last(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model`` gives the same output on ``x`` (to float rounding) with its 4-D
    weights in channels-last layout. False when it fails so (a ``view`` of a feature map
    needs the default layout) or returns anything but a tensor."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return False
    probe = copy.deepcopy(model).eval()
    x = x[:8]
    with torch.no_grad():
        ref = probe(x)
        try:
            out = probe.to(memory_format=torch.channels_last)(x)
        except RuntimeError:
            return False
    if not isinstance(ref, torch.Tensor) or not isinstance(out, torch.Tensor):
        return False
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-3, atol=1e-3 * scale)


class PlanEvaluator:
    """Rewards of plans for one trained model: prune, recalibrate BN, score; cached.

    On the CPU, candidates are scored with their weights in channels-last layout when the
    model runs so (``channels_last=None`` probes it once): oneDNN's convolutions, BN and
    pooling are faster in that layout (1.3-1.5x per evaluation for the digits VGG-16 here);
    the rewards agree to float rounding. A model that fails in it mid-search (a train-mode
    path the probe did not see) is scored in the default layout from then on.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: Graph,
        ranking: dict[str, list[int]],
        calib: list[torch.Tensor],
        score: Score,
        device: torch.device,
        adaptive_bn: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        self.model, self.graph, self.ranking = model, graph, ranking
        self.calib, self.score, self.device = calib, score, device
        self.adaptive_bn = adaptive_bn
        if channels_last is None:  # measured faster on the CPU only
            channels_last = device.type == "cpu" and runs_channels_last(model, calib[0])
        self.channels_last = channels_last
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
        rank, world = rank_world()
        diverged = False
        # NCCL reduces only CUDA tensors: the values live on the evaluator's GPU there
        where = collective_device(self.device)
        if world > 1:
            # every rank scores rank 0's list, so the reductions below have one length on all
            # ranks (unequal lengths hang NCCL); a rank whose own list differs says so in the
            # last element, and all ranks raise together after the same collectives
            shared = [todo]
            dist.broadcast_object_list(shared, src=0, device=where)
            diverged, todo = shared[0] != todo, shared[0]
        if todo or world > 1:
            values = torch.zeros(len(todo) + 1, dtype=torch.float64, device=where)
            values[-1] = float(diverged)
            if not diverged:  # a diverged rank only reports, so no rank waits for it long
                for i, key in enumerate(todo):
                    if i % world == rank:
                        values[i] = self._score(dict(zip(self.groups, key)))
                        self.local_evaluations += 1
            if world > 1:
                dist.all_reduce(values)
            *scores, flag = values.tolist()
            if flag > 0:
                raise UserError(
                    "the torchrun ranks asked to score different plans (their searches "
                    "diverged): run every rank with the same seed, data and options"
                )
            self.cache.update(zip(todo, scores))
            self.evaluations += len(todo)
        return [self.cache[k] for k in keys]

    @torch.no_grad()
    def candidate(self, counts: dict[str, int]) -> nn.Module:
        """The plan as the reward sees it: pruned, BN-recalibrated, in eval mode, on the
        evaluation device, in the default memory layout (for scoring it elsewhere too, e.g.
        on test data, and for saving)."""
        return self._recalibrated(counts).to(memory_format=torch.contiguous_format)

    @torch.no_grad()
    def _recalibrated(self, counts: dict[str, int]) -> nn.Module:
        plan = plan_for_counts(self.graph, counts, self.ranking)
        pruned = apply_plan(self.model, self.graph, plan).to(self.device)
        if self.channels_last:
            pruned = pruned.to(memory_format=torch.channels_last)
        if self.adaptive_bn:
            recalibrate_bn(pruned, self.calib, len(self.calib))
        return pruned.eval()

    @torch.no_grad()
    def _score(self, counts: dict[str, int]) -> float:
        if self.channels_last:
            try:
                return float(self.score(self._recalibrated(counts)))
            except RuntimeError:  # e.g. a view of a feature map on a path the probe missed
                self.channels_last = False
        return float(self.score(self._recalibrated(counts)))

    def reset(self) -> None:
        """Forget every reward (a fresh budget for the next method on the same model)."""
        self.cache, self.evaluations, self.local_evaluations = {}, 0, 0

    def state_dict(self) -> dict:
        return {"cache": list(self.cache.items()), "evaluations": self.evaluations}

    def load_state_dict(self, sd: dict) -> None:
        self.cache = {tuple(k): v for k, v in sd["cache"]}
        self.evaluations = sd["evaluations"]
