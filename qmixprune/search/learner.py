"""QMIX learner: agent + mixer, their target copies, double-Q TD(lambda) loss."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import UserError
from .agent import RNNAgent, agent_inputs
from .mixer import QMixer


@dataclass(frozen=True)
class QmixConfig:
    """pymarl's QMIX defaults, with the schedule shortened to pruning-search budgets."""

    gamma: float = 0.99  # discount
    lr: float = 5e-4  # learning rate of agents and mixer
    optimizer: str = "adam"  # or "rmsprop" (alpha 0.99, eps 1e-5)
    grad_clip: float = 10.0  # gradient norm clip
    batch_size: int = 32  # episodes per learner update
    buffer_size: int = 5000  # episodes kept in the replay buffer
    target_update: int = 100  # learner updates between hard copies to the targets
    td_lambda: float = 0.6  # 0 gives 1-step TD
    double_q: bool = True  # double Q-learning targets
    hidden: int = 64  # GRU agent width
    embed_dim: int = 32  # mixing network width
    standardize_rewards: bool = True  # rewards scaled to zero mean, unit variance
    updates_per_episode: int = 8  # learner updates after each episode
    epsilon_start: float = 1.0  # exploration rate at the start
    epsilon_end: float = 0.05  # exploration rate after epsilon_anneal episodes
    epsilon_anneal: int = 50  # episodes
    warmup: int = 10  # episodes of random actions before learning starts
    elite_explore: float = 0.8  # share of exploring moves that perturb the best plan's actions
    # Q_tot screening: after warm-up, roll out this many candidate episodes per evaluated plan
    # and pay for evaluating only the one the mixer values most
    screen: int = 16  # candidate episodes per evaluation (1 = off: every episode is scored)
    screen_epsilon: float = 1.0  # epsilon of the candidates after the first (at least)

    def learns(self) -> bool:
        """Whether the learned values ever choose an action or a plan. Not with epsilon 1
        throughout and no screening (the elite-only ablation): training would be wasted."""
        return self.screen > 1 or min(self.epsilon_start, self.epsilon_end) < 1.0

    def epsilon(self, episode: int) -> float:
        if episode < self.warmup:
            return 1.0
        frac = min(1.0, (episode - self.warmup) / max(1, self.epsilon_anneal))
        return self.epsilon_start + frac * (self.epsilon_end - self.epsilon_start)


def init_params(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """Re-draw the weights of ``module``'s Linear and GRU layers from ``gen``, with torch's
    default distributions (uniform within 1/sqrt(fan-in or hidden size)), so that a seeded
    run never touches the global RNG's seed."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.in_features)
        elif isinstance(m, (nn.GRUCell, nn.GRU, nn.LSTMCell, nn.LSTM, nn.RNNCell, nn.RNN)):
            bound = 1.0 / math.sqrt(m.hidden_size)
        else:
            continue
        for p in m.parameters(recurse=False):
            nn.init.uniform_(p, -bound, bound, generator=gen)
    return module


def _unroll(agent: RNNAgent, inputs: torch.Tensor) -> torch.Tensor:
    """Agent Qs ``[B, T, N, A]`` for agent inputs ``[B, T, N, D]``."""
    b, t, n, _ = inputs.shape
    steps = inputs.transpose(0, 1).reshape(t, b * n, -1)  # one copy, not one per step
    h = agent.init_hidden(b * n)
    qs = []
    for x in steps:
        q, h = agent(x, h)
        qs.append(q.view(b, n, -1))
    return torch.stack(qs, 1)


class QLearner:
    def __init__(
        self,
        obs_dim: int,
        state_dim: int,
        n_agents: int,
        n_actions: int,
        cfg: QmixConfig,
        generator: torch.Generator | None = None,
    ) -> None:
        """``generator``: draws the initial weights (a seeded run); None: the global RNG."""
        self.cfg, self.n_agents, self.n_actions = cfg, n_agents, n_actions
        self.agent = RNNAgent(obs_dim + n_agents + n_actions, n_actions, cfg.hidden)
        self.mixer = QMixer(n_agents, state_dim, cfg.embed_dim)
        if generator is not None:
            init_params(self.agent, generator)
            init_params(self.mixer, generator)
        self.target_agent = copy.deepcopy(self.agent)
        self.target_mixer = copy.deepcopy(self.mixer)
        params = [*self.agent.parameters(), *self.mixer.parameters()]
        if cfg.optimizer == "adam":
            self.opt = torch.optim.Adam(params, lr=cfg.lr)
        elif cfg.optimizer == "rmsprop":
            self.opt = torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.99, eps=1e-5)
        else:
            raise UserError(f"optimizer must be 'adam' or 'rmsprop', got {cfg.optimizer!r}")
        self.updates = 0

    def unroll(self, agent: RNNAgent, obs: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """Agent Qs for every step of a batch of episodes: ``[B, T, N, A]``."""
        return _unroll(agent, agent_inputs(obs, last, self.n_actions))

    def train(self, batch: dict[str, torch.Tensor], reward_mean: float, reward_std: float) -> float:
        cfg = self.cfg
        obs, state, actions = batch["obs"], batch["state"], batch["actions"]
        reward, done = batch["reward"], batch["done"]
        if cfg.standardize_rewards:
            # scale every reward; centre the episode's return (paid at its last step)
            reward = reward / max(reward_std, 1e-6)
            reward[:, -1] -= reward_mean / max(reward_std, 1e-6)
        inputs = agent_inputs(obs, batch["last_actions"], self.n_actions)
        qs = _unroll(self.agent, inputs)  # [B, T+1, N, A]
        chosen = qs[:, :-1].gather(3, actions.unsqueeze(3)).squeeze(3)
        with torch.no_grad():
            target_qs = _unroll(self.target_agent, inputs)[:, 1:]
            if cfg.double_q:
                best = qs[:, 1:].detach().argmax(3, keepdim=True)
                next_q = target_qs.gather(3, best).squeeze(3)
            else:
                next_q = target_qs.max(3).values
            next_tot = self.target_mixer(next_q, state[:, 1:]).squeeze(2)  # [B, T]
            targets = self._returns(reward, done, next_tot)
        q_tot = self.mixer(chosen, state[:, :-1]).squeeze(2)
        loss = ((q_tot - targets) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(
            [*self.agent.parameters(), *self.mixer.parameters()], cfg.grad_clip
        )
        self.opt.step()
        self.updates += 1
        if self.updates % cfg.target_update == 0:
            self.sync_targets()
        return float(loss.detach())

    def _returns(self, reward, done, next_tot) -> torch.Tensor:
        """TD(lambda) targets, computed backwards; lambda 0 is the 1-step target."""
        gamma, lam = self.cfg.gamma, self.cfg.td_lambda
        t = reward.shape[1]
        out = torch.zeros_like(reward)
        ret = next_tot[:, -1] * (1 - done[:, -1])
        for i in reversed(range(t)):
            boot = lam * ret + (1 - lam) * next_tot[:, i] if i < t - 1 else next_tot[:, i]
            ret = reward[:, i] + gamma * (1 - done[:, i]) * boot
            out[:, i] = ret
        return out

    @torch.no_grad()
    def final_value(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Q_tot of each episode's last joint action ``[B]``: its predicted (standardised)
        terminal reward, as the learned value of the plan the episode proposes."""
        qs = self.unroll(self.agent, batch["obs"], batch["last_actions"])[:, -2]  # [B, N, A]
        chosen = qs.gather(2, batch["actions"][:, -1].unsqueeze(2)).squeeze(2)  # [B, N]
        return self.mixer(chosen[:, None], batch["state"][:, -2][:, None]).view(-1)

    def sync_targets(self) -> None:
        self.target_agent.load_state_dict(self.agent.state_dict())
        self.target_mixer.load_state_dict(self.mixer.state_dict())

    def state_dict(self) -> dict:
        return {
            "agent": self.agent.state_dict(),
            "mixer": self.mixer.state_dict(),
            "target_agent": self.target_agent.state_dict(),
            "target_mixer": self.target_mixer.state_dict(),
            "opt": self.opt.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, sd: dict) -> None:
        self.agent.load_state_dict(sd["agent"])
        self.mixer.load_state_dict(sd["mixer"])
        self.target_agent.load_state_dict(sd["target_agent"])
        self.target_mixer.load_state_dict(sd["target_mixer"])
        self.opt.load_state_dict(sd["opt"])
        self.updates = sd["updates"]
