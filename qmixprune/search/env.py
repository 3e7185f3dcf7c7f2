"""The pruning environment: one agent per prunable group, T iterative steps.

At each step every agent removes a further 0, 5, ..., 20 % of its group's channels (the
action set is configurable). After the last step the budget wall (``fit_to_budget``)
scales the proposal onto the target, and the team is rewarded with what the plan
evaluator (``evaluator.py``: prune, recalibrate BN, score, cache) says the plan is worth.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from ..budget import (
    Budget,
    CostModel,
    check_reachable,
    fit_to_budget,
    floors,
    multiples,
    reachable_round_to,
)
from ..device import module_device, to_device
from ..errors import UserError
from ..flops import layer_table
from ..graph import Graph
from ..importance import group_scores, ranks
from ..rounding import DEFAULT_MULTIPLE
from .evaluator import PlanEvaluator, Score, calib_inputs, val_score
from .rewards import REWARDS, distill_score, kl_score

N_GLOBAL = 4  # step, budget load of the proposal (1 = on target), first target, load - 1


@dataclass(frozen=True)
class EnvConfig:
    target_flops: float | None = 0.4  # fraction of the MACs kept
    target_latency: float | None = None  # fraction of the measured latency kept
    steps: int = 6  # pruning steps per episode
    n_actions: int = 5  # actions per step: remove 0, 1, ... n_actions-1 times action_step
    action_step: float = 0.05  # fraction of a group's channels removed per action unit
    # kept channels a multiple of this; None: 8 for a FLOPs target, the profiled multiple with
    # a latency table; 1 keeps exact FLOPs, but unaligned widths run slow
    round_to: int | None = None
    min_channels: int = 1  # no group keeps fewer channels
    min_keep: float = 0.05  # floor: fraction of each group's channels that always stays
    importance: str = "l1"  # filter ranking: l1, l2, fpgm, bn_scale or random
    reward_batches: int = 4  # val batches scored per plan (the reward)
    calib_batches: int = 8  # training batches that re-estimate BN statistics per plan
    adaptive_bn: bool = True  # recalibrate BN statistics before scoring a plan
    # acc, loss (negative cross-entropy), kl (negative KL divergence from the teacher's val
    # outputs) or distill (val accuracy after distill_steps of distillation; slower)
    reward: str = "acc"
    distill_steps: int = 25  # distillation steps per plan for reward "distill"
    step_reward: bool = False  # reward every step's projected plan, not only the last
    channels_last: bool | None = None  # score candidates in that layout; None: on CPU if it runs

    def validate(self) -> None:
        for name in ("target_flops", "target_latency"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise UserError(f"{name} must be in (0, 1), got {value}")
        if self.target_flops is None and self.target_latency is None:
            raise UserError("set target_flops, target_latency, or both")
        if self.steps < 1 or self.n_actions < 2 or self.action_step <= 0:
            raise UserError("steps >= 1, n_actions >= 2 and action_step > 0 are required")
        if self.round_to is not None and self.round_to < 1:
            raise UserError(f"round_to must be >= 1, got {self.round_to}")
        if self.reward not in REWARDS:
            raise UserError(f"reward must be one of {list(REWARDS)}, got {self.reward!r}")
        if self.distill_steps < 1:
            raise UserError(f"distill_steps must be >= 1, got {self.distill_steps}")


def default_round_to(latency) -> int:
    """With a latency table, the channel multiple that ``qmixprune profile`` measured the
    device to reward; else ``DEFAULT_MULTIPLE`` (8): exact FLOPs with odd widths run slowly."""
    return latency.multiple if latency is not None else DEFAULT_MULTIPLE


@dataclass(frozen=True)
class Bounds:
    """What a search may do to a model: its budget, the multiple each group keeps, and
    each group's floor. Made by ``bounds`` (which refuses a target out of reach)."""

    budget: Budget
    round_to: int
    multiple: dict[str, int]
    low: dict[str, int]


def bounds(graph: Graph, cost: CostModel, cfg: EnvConfig, latency=None) -> Bounds:
    """The search's budget and floors for ``cfg``; one line (``UserError``) when no plan
    can meet the target, so that a run can refuse it before any long work. ``round_to``
    None becomes the default multiple, halved (with a warning) when it makes the target
    unreachable for narrow layers."""
    cfg.validate()
    groups = [g.name for g in graph.prunable]
    if not groups:
        raise UserError("the model has no prunable channel groups (see `qmixprune analyze`)")
    budget = Budget(cost, cfg.target_flops, latency, cfg.target_latency)
    round_to = cfg.round_to
    if round_to is None:
        wanted = default_round_to(latency)
        round_to = reachable_round_to(budget, groups, wanted, cfg.min_channels, cfg.min_keep)
        if round_to != wanted:
            why = "the profiled" if latency is not None else "the default"
            warnings.warn(
                f"rounding kept channels to multiples of {round_to}, not {why} {wanted}: "
                f"with multiples of {wanted} the target is out of reach for this model's "
                "narrow layers",
                stacklevel=2,
            )
    multiple = multiples(graph, groups, round_to)  # grouped convs: periods
    low = floors(cost, groups, multiple, cfg.min_channels, cfg.min_keep)
    check_reachable(budget, low)
    return Bounds(budget, round_to, multiple, low)


class PruningEnv:
    """The episode dynamics for one trained model: ``reset``/``step`` drive an episode,
    ``project`` puts its keep fractions on the budget, and ``evaluator`` scores the plan."""

    def __init__(
        self,
        model: nn.Module,
        graph: Graph,
        cost: CostModel,
        cfg: EnvConfig,
        calib: list[torch.Tensor],
        score: Score,
        latency=None,
        device: torch.device | None = None,
        *,
        limits: Bounds | None = None,
        rows: list | None = None,
    ) -> None:
        """``limits`` (from ``bounds``) and ``rows`` (``flops.measure``'s for ``model``)
        when the caller has them: nothing is checked or measured twice."""
        limits = limits if limits is not None else bounds(graph, cost, cfg, latency)
        cfg = replace(cfg, round_to=limits.round_to)
        self.groups = [g.name for g in graph.prunable]
        self.budget, self.multiple, self.low = limits.budget, limits.multiple, limits.low
        self.model, self.graph, self.cost, self.cfg = model.eval(), graph, cost, cfg
        self.n_agents = len(self.groups)
        self.latency = latency
        self.scores = group_scores(model, graph.prunable, cfg.importance)
        self.ranking = ranks(model, graph.prunable, cfg.importance, self.scores)
        device = module_device(model) if device is None else device
        self.evaluator = PlanEvaluator(
            model, graph, self.ranking, calib, score, device, cfg.adaptive_bn, cfg.channels_last
        )
        self.static = self._static_features(rows)
        self.obs_dim = self.static.shape[1] + 3 + N_GLOBAL
        self.state_dim = self.n_agents * self.obs_dim + N_GLOBAL

    # -- features ------------------------------------------------------------------------
    def _static_features(self, rows: list | None = None) -> torch.Tensor:
        modules = dict(self.model.named_modules())
        if rows is None:
            x = torch.zeros(1, *self.graph.input_shape, device=module_device(self.model))
            rows = layer_table(self.model, x)
        rows = {r.name: r for r in rows}
        macs = self.cost.group_macs()
        lat = self.latency.group_shares() if self.latency is not None else {}
        total_params = sum(p.numel() for p in self.model.parameters())
        feats = []
        for i, name in enumerate(self.groups):
            group = self.graph.group(name)
            m = modules[name]
            row = rows.get(name)
            side = row.out_shape[-1] if row and len(row.out_shape) == 3 else 1
            scores = self.scores[name].float()
            scores = scores / scores.sum().clamp_min(1e-12)
            half = scores.sort().values[: len(scores) // 2].sum()
            params = sum(
                modules[mod].weight.numel()
                for mod in group.modules
                if getattr(modules[mod], "weight", None) is not None
            )
            feats.append(
                [
                    i / max(1, self.n_agents - 1),
                    math.log2(getattr(m, "in_channels", getattr(m, "in_features", 1))) / 12,
                    math.log2(group.channels) / 12,
                    getattr(m, "kernel_size", (1,))[0] / 7,
                    getattr(m, "stride", (1,))[0] / 2,
                    math.log2(side + 1) / 8,
                    macs[name] / self.cost.total,
                    lat.get(name, 0.0),  # share of the measured latency
                    params / total_params,
                    float(scores.std() * group.channels),  # spread of importance
                    float(half),  # importance mass of the weaker half
                    self.low[name] / group.channels,
                ]
            )
        return torch.tensor(feats, dtype=torch.float32)

    def observe(self, keep: torch.Tensor, last: torch.Tensor, t: int):
        """Per-agent observations ``[N, obs_dim]`` and the global state ``[state_dim]``."""
        load = self.budget.load(self.counts(keep))
        glob = torch.tensor([t / self.cfg.steps, load, self.budget.parts[0][2], load - 1.0])
        left = torch.full_like(keep, (self.cfg.steps - t) / self.cfg.steps)
        own = torch.stack([keep, last.float() / (self.cfg.n_actions - 1), left], 1)
        obs = torch.cat([self.static, own, glob.expand(self.n_agents, -1)], 1)
        return obs, torch.cat([obs.reshape(-1), glob])

    def counts(self, keep: torch.Tensor) -> dict[str, int]:
        """Keep fractions as channel counts, each at least its group's floor."""
        return {
            g: max(self.low[g], int(round(float(k) * self.graph.group(g).channels)))
            for g, k in zip(self.groups, keep)
        }

    # -- episode -------------------------------------------------------------------------
    def reset(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Start an episode: keep fractions, observations, state."""
        self.keep = torch.ones(self.n_agents)
        self.t = 0
        self.last = torch.zeros(self.n_agents, dtype=torch.long)
        self.prev_reward = self.evaluate(self.project(self.keep)) if self.cfg.step_reward else 0.0
        obs, state = self.observe(self.keep, self.last, 0)
        return obs, state

    def step(self, actions: torch.Tensor, defer: bool = False):
        """Apply one action per agent; returns (obs, state, reward, done). With ``defer`` the
        terminal reward is left at 0 for the caller to score in a batch (``evaluate_many``)."""
        floor = torch.tensor([self.low[g] / self.graph.group(g).channels for g in self.groups])
        self.keep = torch.maximum(self.keep - actions.float() * self.cfg.action_step, floor)
        self.last = actions.clone()
        self.t += 1
        done = self.t >= self.cfg.steps
        reward = 0.0
        if (done and not defer) or self.cfg.step_reward:
            value = self.evaluate(self.project(self.keep))
            reward = value - self.prev_reward if self.cfg.step_reward else value
            self.prev_reward = value
        obs, state = self.observe(self.keep, self.last, self.t)
        return obs, state, reward, done

    def project(self, keep: torch.Tensor) -> dict[str, int]:
        """The budget wall applied to keep fractions: integer channel counts on target."""
        proposal = {g: float(k) for g, k in zip(self.groups, keep)}
        return fit_to_budget(self.budget, proposal, self.low, self.multiple)

    # -- reward (the evaluator's; kept here so that every method reaches it the same way) ---
    def evaluate(self, counts: dict[str, int]) -> float:
        """Reward of a plan: see ``PlanEvaluator``."""
        return self.evaluator.evaluate(counts)

    def evaluate_many(self, plans: list[dict[str, int]]) -> list[float]:
        return self.evaluator.evaluate_many(plans)

    @property
    def evaluations(self) -> int:
        """Distinct plans scored so far, by all ranks together."""
        return self.evaluator.evaluations

    @property
    def local_evaluations(self) -> int:
        return self.evaluator.local_evaluations

    @property
    def cache(self) -> dict[tuple[int, ...], float]:
        return self.evaluator.cache


def build_env(
    model: nn.Module,
    data,
    cfg: EnvConfig,
    seed: int = 0,
    latency_table: dict | None = None,
    *,
    device: torch.device | None = None,
    score: Score | None = None,
    calib: Iterable | None = None,
    batch_size: int = 64,
    measured: Measured | None = None,
) -> PruningEnv:
    """An environment for ``model`` on ``data`` (a ``DataSplits``).

    ``calib``: model inputs (tensors, or batches whose first element is the input) for BN
    recalibration; default: ``cfg.calib_batches`` fixed shuffled batches of ``data.train``.
    ``score(pruned) -> float`` (higher is better): the reward of a pruned, recalibrated
    candidate; default: ``cfg.reward`` (see ``rewards``) on ``cfg.reward_batches`` fixed
    batches of ``data.val``. ``data`` may be None when both are given. ``device`` (default:
    the model's) is where those batches are moved, once, and where candidates are evaluated.
    ``measured``: the model's analysis, costs and bounds when the caller has made them
    (``measure``); else they are made here.
    """
    from ..train import loader

    if data is None and (score is None or calib is None):
        raise UserError("build_env needs data, unless both score and calib are given")
    device = module_device(model) if device is None else device
    if calib is None:
        calib = loader(data.train, batch_size, shuffle=True, seed=seed)
    calib = calib_inputs(calib, cfg.calib_batches, device)
    if score is None:
        val = loader(data.val, batch_size * 2, False)
        val = [to_device(b, device) for b in itertools.islice(val, cfg.reward_batches)]
        if not val:
            raise UserError("the data set is empty: no validation batches for the reward")
        score = reward_score(model, data, val, cfg, batch_size, seed, device)
    if measured is None:
        shape = data.input_shape if data is not None else tuple(calib[0].shape[1:])
        measured = measure(model, shape, cfg, latency_table)
    return PruningEnv(
        model,
        measured.graph,
        measured.cost,
        cfg,
        calib,
        score,
        measured.latency,
        device,
        limits=measured.bounds,
        rows=measured.rows,
    )


def reward_score(model, data, val, cfg: EnvConfig, batch_size, seed, device) -> Score:
    """``cfg.reward`` on the fixed ``val`` batches (already on ``device``); ``model`` is the
    teacher that ``kl`` and ``distill`` compare against."""
    from ..train import loader

    if cfg.reward in ("acc", "loss"):
        return val_score(val, cfg.reward)
    if cfg.reward == "kl":
        with torch.no_grad():
            logits = [model.eval()(x).float() for x, _ in val]
        return kl_score(val, logits)
    # fixed batches, another stream than the BN calibration's: every plan trains on the same
    batches = loader(data.train, batch_size, shuffle=True, seed=seed + 1)
    train = [to_device(b, device) for b in itertools.islice(batches, cfg.distill_steps)]
    return distill_score(model, train, val, cfg.distill_steps)


@dataclass(frozen=True)
class Measured:
    """A model as the search sees it, measured once: its layers (``flops.measure``), its
    channel graph, the costs of plans and the search's bounds."""

    rows: list
    graph: Graph
    cost: CostModel
    latency: object | None  # a LatencyModel when the budget includes measured latency
    bounds: Bounds


def measure(
    model: nn.Module, input_shape, cfg: EnvConfig, latency_table: dict | None = None, rows=None
) -> Measured:
    """Analyse ``model`` (where it is) for a search with ``cfg``; ``rows`` when the caller
    has run ``flops.measure`` already. Refuses (one line) a target out of reach."""
    from ..graph import analyze

    x = torch.zeros(1, *input_shape, device=module_device(model))
    if rows is None:
        rows = layer_table(model, x)
    graph = analyze(model, x)
    cost = CostModel(model, graph, x, rows)
    latency = None
    if latency_table is not None:
        from ..latency import LatencyModel

        latency = LatencyModel(latency_table, cost)
    return Measured(rows, graph, cost, latency, bounds(graph, cost, cfg, latency))
