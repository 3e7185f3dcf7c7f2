"""Baselines in the same environment, with the same evaluation budget as the search:
uniform ratio, global L1 threshold, random search, (mu + lambda) evolution and a single
DQN agent. What helps QMIX is offered to them too: evolution mutates with QMIX's elite move
and the single agent explores with it (both with QMIX's ``elite_explore``).

Each returns the best plan it found and its reward, scored by ``env.evaluate`` (the same
BN recalibration and val batches as QMIX).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..budget import uniform_counts
from ..errors import UserError
from ..importance import get_criterion
from ..rounding import round_to_multiple
from .agent import agent_inputs
from .buffer import EpisodeBuffer
from .env import PruningEnv
from .learner import QLearner, QmixConfig


@dataclass
class BaselineResult:
    counts: dict[str, int]
    reward: float
    evaluations: int


def uniform(env: PruningEnv, budget: int = 1, seed: int = 0) -> BaselineResult:
    """Every group loses the same fraction of its channels."""
    cfg = env.cfg
    counts = uniform_counts(env.budget, env.groups, cfg.round_to, cfg.min_channels)
    counts = {g: max(k, env.low[g]) for g, k in counts.items()}
    return BaselineResult(counts, env.evaluate(counts), 1)


def global_l1(env: PruningEnv, budget: int = 1, seed: int = 0) -> BaselineResult:
    """One threshold on L1 importance (normalised by each group's mean) across all groups."""
    crit = get_criterion(env.cfg.importance)
    scores = {}
    for g in env.groups:
        s = crit(env.model, env.graph.group(g)).double()
        scores[g] = (s / s.mean().clamp_min(1e-12)).sort(descending=True).values
    rt = env.cfg.round_to

    def counts(tau: float) -> dict[str, int]:
        out = {}
        for g, s in scores.items():
            k = round_to_multiple(int((s >= tau).sum()), rt)
            out[g] = min(len(s), max(env.low[g], k))
        return out

    lo, hi = 0.0, max(float(s[0]) for s in scores.values()) + 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if env.budget.load(counts(mid)) <= 1.0:
            hi = mid
        else:
            lo = mid
    best = counts(hi)
    return BaselineResult(best, env.evaluate(best), 1)


def random_search(env: PruningEnv, budget: int = 200, seed: int = 0) -> BaselineResult:
    """Random keep fractions per group, put on the budget by the same wall as QMIX."""
    gen = torch.Generator().manual_seed(seed)
    return _best_of(env, budget, lambda: torch.rand(env.n_agents, generator=gen))


def evolutionary(
    env: PruningEnv,
    budget: int = 200,
    seed: int = 0,
    mu: int = 8,
    lam: int = 16,
    sigma: float = 0.15,
    mutation: str = "elite",
    elite_explore: float = QmixConfig.elite_explore,
) -> BaselineResult:
    """(mu + lambda) evolution; each child is rescaled onto the target by the budget wall.

    ``mutation="gaussian"``: genomes are keep-fraction vectors, mutated by N(0, sigma).
    ``mutation="elite"`` (default: QMIX's own exploration move, offered to evolution too):
    genomes are QMIX's action matrices (steps x groups); each entry of the parent moves by
    -1/0/+1 with probability ``elite_explore``, else it is redrawn uniformly."""
    if mutation not in ("gaussian", "elite"):
        raise UserError(f"mutation must be 'gaussian' or 'elite', got {mutation!r}")
    gen = torch.Generator().manual_seed(seed)
    steps, n_act = env.cfg.steps, env.cfg.n_actions

    def random_genome() -> torch.Tensor:
        if mutation == "gaussian":
            return torch.rand(env.n_agents, generator=gen)
        return torch.randint(0, n_act, (steps, env.n_agents), generator=gen)

    def mutate(parent: torch.Tensor) -> torch.Tensor:
        if mutation == "gaussian":
            noise = sigma * torch.randn(env.n_agents, generator=gen)
            return (parent + noise).clamp(0.0, 1.0)
        moved = (parent + torch.randint(-1, 2, parent.shape, generator=gen)).clamp(0, n_act - 1)
        fresh = torch.randint(0, n_act, parent.shape, generator=gen)
        near = torch.rand(parent.shape, generator=gen) < elite_explore
        return torch.where(near, moved, fresh)

    def keep(genome: torch.Tensor) -> torch.Tensor:
        if mutation == "gaussian":
            return genome
        return keep_after(env, genome)

    start = env.evaluations
    scored = []
    while len(scored) < mu and (not scored or env.evaluations - start < budget):
        genome = random_genome()
        scored.append((_score(env, keep(genome)), genome))
    stall = 0
    while env.evaluations - start < budget and stall < 50:
        before = env.evaluations
        children = []
        for _ in range(lam):
            parent = scored[int(torch.randint(0, len(scored), (1,), generator=gen))][1]
            child = mutate(parent)
            children.append((_score(env, keep(child)), child))
            if env.evaluations - start >= budget:
                break
        scored = sorted(scored + children, key=lambda s: -s[0][1])[:mu]
        stall = stall + 1 if env.evaluations == before else 0
    (counts, reward), _ = scored[0]
    return BaselineResult(counts, reward, env.evaluations - start)


def keep_after(env: PruningEnv, actions: torch.Tensor) -> torch.Tensor:
    """Keep fractions after an episode of ``actions [steps, groups]`` (as ``env.step``
    leaves them: each step removes its share, never below the group's floor)."""
    floor = torch.tensor([env.low[g] / env.graph.group(g).channels for g in env.groups])
    return torch.maximum(1.0 - env.cfg.action_step * actions.sum(0).float(), floor)


def _score(env: PruningEnv, keep: torch.Tensor) -> tuple[dict[str, int], float]:
    counts = env.project(keep)
    return counts, env.evaluate(counts)


def _best_of(env: PruningEnv, budget: int, sample) -> BaselineResult:
    start, best, tries = env.evaluations, None, 0
    while env.evaluations - start < budget and tries < 20 * budget:
        counts, reward = _score(env, sample())
        tries += 1
        if best is None or reward > best[1]:
            best = (counts, reward)
    return BaselineResult(best[0], best[1], env.evaluations - start)


def single_agent(
    env: PruningEnv,
    budget: int = 200,
    seed: int = 0,
    levels: int = 10,
    elite_explore: float = QmixConfig.elite_explore,
):
    """AMC-style single agent: one DQN (GRU agent, the same learner with one agent) walks the
    groups in order and picks each group's keep fraction from ``levels`` bins; the terminal
    reward is the plan's, after the same budget wall. Exploring moves are QMIX's: with
    probability ``elite_explore`` the best episode's bin at that step moved by -1/0/+1, else a
    uniform random bin."""
    gen = torch.Generator().manual_seed(seed)
    q = QmixConfig()
    n, feats = env.n_agents, env.static.shape[1]
    obs_dim = feats + 3
    learner = QLearner(obs_dim, obs_dim, 1, levels, q, gen)
    buffer = EpisodeBuffer(q.buffer_size)
    bins = torch.linspace(1.0 / levels, 1.0, levels)
    start, best, episode = env.evaluations, None, 0
    while env.evaluations - start < budget and episode < 20 * budget:  # as QMIX's cap
        eps = q.epsilon(episode)
        keep = torch.ones(n)
        h = learner.agent.init_hidden(1)
        last = torch.zeros(1, dtype=torch.long)
        obs_seq, acts = [], []
        for t in range(n + 1):
            load = env.budget.load(env.counts(keep))
            row = env.static[min(t, n - 1)]
            obs = torch.cat([row, torch.tensor([t / n, load, load - 1.0])])[None]
            obs_seq.append(obs)
            if t == n:
                break
            with torch.no_grad():
                qv, h = learner.agent(agent_inputs(obs, last, levels), h)
            a = qv.argmax(1)
            if float(torch.rand(1, generator=gen)) < eps:
                a = torch.randint(0, levels, (1,), generator=gen)
                if best is not None and float(torch.rand(1, generator=gen)) < elite_explore:
                    moved = best[2][t] + torch.randint(-1, 2, (1,), generator=gen)
                    a = moved.clamp(0, levels - 1)
            keep[t] = bins[a]
            acts.append(a)
            last = a
        counts = env.project(keep)
        reward = env.evaluate(counts)
        if best is None or reward > best[1]:
            best = (counts, reward, torch.cat(acts))
        obs_t = torch.stack(obs_seq)
        actions = torch.stack(acts)
        rewards = torch.zeros(n)
        rewards[-1] = reward
        done = torch.zeros(n)
        done[-1] = 1.0
        buffer.add(
            {
                "obs": obs_t,
                "state": obs_t[:, 0],
                "actions": actions,
                "last_actions": torch.cat([torch.zeros(1, 1, dtype=torch.long), actions]),
                "reward": rewards,
                "done": done,
            }
        )
        episode += 1
        if episode > q.warmup:
            r = buffer.rewards()[:, -1]
            mean, std = float(r.mean()), float(r.std()) if len(r) > 1 else 1.0
            for _ in range(q.updates_per_episode):
                learner.train(buffer.sample(q.batch_size, gen), mean, std)
    return BaselineResult(best[0], best[1], env.evaluations - start)


BASELINES = {
    "uniform": uniform,
    "global_l1": global_l1,
    "random": random_search,
    "evolutionary": evolutionary,
    "single_agent": single_agent,
}
