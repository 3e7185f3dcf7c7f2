"""The search loop: episodes in the environment, QMIX learning, logging, checkpoints.

Resuming restores networks, optimiser, replay buffer, reward cache, RNG and the log, so a
run interrupted and resumed with the same seed ends exactly as an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..distributed import is_main
from ..errors import UserError
from ..files import write_bytes
from .buffer import EpisodeBuffer
from .env import EnvConfig, PruningEnv
from .learner import QLearner, QmixConfig

# measured by benchmarks/patience.py on a setting the search benchmark does not report
# (docs/benchmarks.md):
# the smallest of 20-100 that lost no val reward against the full 200 evaluations on any of
# its 3 seeds (40 lost up to 1.05 points), spending 124 evaluations on average
PATIENCE = 50


@dataclass(frozen=True)
class SearchConfig:
    episodes: int = 200  # search episodes at most (patience and max_evaluations may stop sooner)
    max_evaluations: int | None = None  # stop once this many distinct plans were scored
    seed: int = 0  # seeds the agents, exploration and the val split
    checkpoint_every: int = 10  # episodes between checkpoints (and progress lines in a log)
    envs: int = 1  # episodes run together per iteration, their plans scored as one batch
    # stop once the best reward has not improved for this many evaluations; 0 = never
    patience: int = PATIENCE
    env: EnvConfig = field(default_factory=EnvConfig)
    qmix: QmixConfig = field(default_factory=QmixConfig)


@dataclass
class SearchResult:
    counts: dict[str, int]  # best plan: kept channels per group
    reward: float
    macs_ratio: float
    evaluations: int
    episodes: int
    seconds: float
    log: list[dict]
    # set when the search stopped early: {"episode", "evaluations", "best_evaluation",
    # "patience"} (the last log entry carries the same under "early_stop")
    early_stop: dict | None = None


@dataclass(frozen=True)
class SearchFiles:
    """Where a search keeps its record: the checkpoint it resumes from and its log (one
    JSON line per episode). The run that owns the folder names them (``run.outputs``)."""

    checkpoint: Path
    log: Path


class SearchRun:
    """Mutable state of one search; everything in it is checkpointed."""

    def __init__(self, env: PruningEnv, cfg: SearchConfig) -> None:
        self.env, self.cfg = env, cfg
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.learner = QLearner(
            env.obs_dim, env.state_dim, env.n_agents, env.cfg.n_actions, cfg.qmix, self.gen
        )
        self.buffer = EpisodeBuffer(cfg.qmix.buffer_size)
        self.episode = 0
        self.best: tuple[float, dict[str, int], list] | None = None  # reward, counts, actions
        self.best_evaluation = 0  # evaluations done when the best reward last improved
        self.early_stop: dict | None = None
        self.log: list[dict] = []
        self.seconds = 0.0

    def state_dict(self) -> dict:
        return {
            "learner": self.learner.state_dict(),
            "buffer": self.buffer.state_dict(),
            "gen": self.gen.get_state(),
            "episode": self.episode,
            "log": json.dumps(self.log),
            "seconds": self.seconds,
            "best": json.dumps(self.best),
            "best_evaluation": self.best_evaluation,
            "early_stop": json.dumps(self.early_stop),
            "evaluator": json.dumps(self.env.evaluator.state_dict()),
            "config": json.dumps(asdict(self.cfg)),
        }

    def load_state_dict(self, sd: dict) -> None:
        if json.loads(sd["config"]) != json.loads(json.dumps(asdict(self.cfg))):
            raise UserError(
                "the checkpoint was made with another configuration: "
                "resume with the same options, or start afresh"
            )
        self.learner.load_state_dict(sd["learner"])
        self.buffer.load_state_dict(sd["buffer"])
        self.gen.set_state(sd["gen"])
        self.episode, self.seconds = sd["episode"], sd["seconds"]
        self.log = json.loads(sd["log"])
        best = json.loads(sd["best"])
        self.best = (best[0], best[1], best[2]) if best else None
        self.best_evaluation = sd["best_evaluation"]
        self.early_stop = json.loads(sd["early_stop"])
        self.env.evaluator.load_state_dict(json.loads(sd["evaluator"]))

    # -- one episode ------------------------------------------------------------------------
    def act(self, q: torch.Tensor, eps: float, t: int) -> torch.Tensor:
        n, a = q.shape
        greedy = q.argmax(1)
        explore = torch.rand(n, generator=self.gen) < eps
        rand = torch.randint(0, a, (n,), generator=self.gen)
        if self.best is not None and self.cfg.qmix.elite_explore > 0:
            # learning from the plans already evaluated: explore near the best one
            elite = torch.tensor(self.best[2][t]) + torch.randint(-1, 2, (n,), generator=self.gen)
            near = torch.rand(n, generator=self.gen) < self.cfg.qmix.elite_explore
            rand = torch.where(near, elite.clamp(0, a - 1), rand)
        return torch.where(explore, rand, greedy)

    def propose(self, eps: float, defer: bool) -> tuple[dict, dict[str, int]]:
        """The next episode to score and its plan. With screening (``QmixConfig.screen`` > 1,
        after warm-up, terminal rewards), ``screen`` candidate episodes are rolled out and
        the one with the highest learned Q_tot among plans not yet evaluated is kept."""
        q, env = self.cfg.qmix, self.env
        if q.screen <= 1 or self.episode < q.warmup or env.cfg.step_reward:
            episode = self.run_episode(eps, defer)
            return episode, env.project(env.keep)
        cands = []
        for i in range(q.screen):
            episode = self.run_episode(eps if i == 0 else max(eps, q.screen_epsilon), True)
            cands.append((episode, env.keep.clone()))
        fields = ("obs", "state", "actions", "last_actions")
        batch = {k: torch.stack([c[0][k] for c in cands]) for k in fields}
        first = None
        for i in self.learner.final_value(batch).argsort(descending=True).tolist():
            counts = env.project(cands[i][1])  # projected lazily: the wall is the costly part
            first = first or (cands[i][0], counts)
            if tuple(counts[g] for g in env.groups) not in env.cache:
                return cands[i][0], counts
        return first

    def run_episode(self, eps: float, defer: bool = False) -> dict:
        env, steps = self.env, self.env.cfg.steps
        obs, state = env.reset()
        last = torch.zeros(env.n_agents, dtype=torch.long)
        h = self.learner.agent.init_hidden(env.n_agents)
        ep = {
            "obs": [obs],
            "state": [state],
            "actions": [],
            "last_actions": [last],
            "reward": [],
            "done": [],
        }
        from .agent import agent_inputs

        for t in range(steps):
            with torch.no_grad():
                q, h = self.learner.agent(agent_inputs(obs, last, env.cfg.n_actions), h)
            actions = self.act(q, eps, t)
            obs, state, reward, done = env.step(actions, defer)
            step = {
                "obs": obs,
                "state": state,
                "actions": actions,
                "last_actions": actions,
                "reward": reward,
                "done": float(done),
            }
            for k, v in step.items():
                ep[k].append(torch.as_tensor(v))
            last = actions
        episode = {k: torch.stack(v) for k, v in ep.items()}
        episode["reward"] = episode["reward"].float()
        return episode


def _learn_and_log(
    run: SearchRun, episode: dict, counts: dict, reward: float, eps: float, start: float
) -> dict:
    """Store one finished episode, track the best plan, train the learner, log."""
    env, q = run.env, run.cfg.qmix
    run.buffer.add(episode)
    if run.best is None or reward > run.best[0]:
        run.best = (reward, counts, episode["actions"].tolist())
        run.best_evaluation = env.evaluations
    loss = None
    if run.episode >= q.warmup and len(run.buffer) >= 2 and q.learns():
        rewards = run.buffer.rewards()[:, -1]
        mean, std = float(rewards.mean()), float(rewards.std()) if len(rewards) > 1 else 1.0
        losses = [
            run.learner.train(run.buffer.sample(q.batch_size, run.gen), mean, std)
            for _ in range(q.updates_per_episode)
        ]
        loss = sum(losses) / len(losses)
    run.episode += 1
    run.seconds = time.perf_counter() - start
    entry = {
        "episode": run.episode,
        "reward": reward,
        "best": run.best[0],
        **{k.lower(): v for k, v in env.budget.ratios(counts).items()},
        "macs": env.cost.ratio(counts),
        "epsilon": eps,
        "loss": loss,
        "evaluations": env.evaluations,
        "seconds": round(run.seconds, 2),
    }
    run.log.append(entry)
    return entry


def search(
    env: PruningEnv,
    cfg: SearchConfig,
    files: SearchFiles | None = None,
    resume: bool = False,
    on_episode: Callable[[dict], None] | None = None,
) -> SearchResult:
    """Run the QMIX search; with ``files``, log every episode and checkpoint (``resume``
    continues from that checkpoint)."""
    run = SearchRun(env, cfg)
    ckpt = files.checkpoint if files is not None else None
    if resume:
        if ckpt is None or not ckpt.is_file():
            raise UserError(f"nothing to resume: no search checkpoint {ckpt}")
        try:
            run.load_state_dict(torch.load(ckpt, weights_only=True))
        except (RuntimeError, KeyError, ValueError) as exc:
            raise UserError(f"{ckpt} is damaged: {exc}; start afresh without --resume") from exc
    if cfg.envs < 1:
        raise UserError(f"envs must be >= 1, got {cfg.envs}")
    if cfg.patience < 0:
        raise UserError(f"patience must be >= 0 (0 = never stop early), got {cfg.patience}")
    if files is not None and is_main():  # the log holds exactly the checkpointed episodes
        write_bytes(files.log, "".join(json.dumps(e) + "\n" for e in run.log).encode())
    start = time.perf_counter() - run.seconds
    q = cfg.qmix
    deferred = not env.cfg.step_reward  # terminal rewards are scored in one batch
    while run.episode < cfg.episodes and run.early_stop is None:
        if cfg.max_evaluations is not None and env.evaluations >= cfg.max_evaluations:
            break
        eps = q.epsilon(run.episode)
        # E episodes with the same policy (pymarl's parallel runner); their plans are scored
        # together, shared out across ranks when torch.distributed is active
        batch, plans = [], []
        for _ in range(min(cfg.envs, cfg.episodes - run.episode)):
            episode, counts = run.propose(eps, deferred)
            batch.append(episode)
            plans.append(counts)
        rewards = env.evaluate_many(plans)
        first = run.episode
        entries = []
        for episode, counts, reward in zip(batch, plans, rewards):
            if deferred:
                episode["reward"][-1] = reward
            entries.append(_learn_and_log(run, episode, counts, reward, eps, start))
        if cfg.patience and env.evaluations - run.best_evaluation >= cfg.patience:
            stop = {"best_evaluation": run.best_evaluation, "patience": cfg.patience}
            entries[-1]["early_stop"] = stop
            run.early_stop = {"episode": run.episode, "evaluations": env.evaluations, **stop}
        for entry in entries:
            if files is not None and is_main():
                with open(files.log, "a") as f:
                    f.write(json.dumps(entry) + "\n")
            if on_episode is not None:
                on_episode(entry)
        every = cfg.checkpoint_every
        crossed = run.episode // every > first // every or run.episode == cfg.episodes
        crossed = crossed or run.early_stop is not None
        if ckpt is not None and crossed and is_main():  # only at batch boundaries
            buf = io.BytesIO()
            torch.save(run.state_dict(), buf)
            write_bytes(ckpt, buf.getvalue())
    best_reward, best_counts, _ = run.best
    return SearchResult(
        best_counts,
        best_reward,
        env.cost.ratio(best_counts),
        env.evaluations,
        run.episode,
        run.seconds,
        run.log,
        run.early_stop,
    )
