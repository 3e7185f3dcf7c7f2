"""The QMIX mixing network: Q_tot is a monotonic function of the agents' Qs.

Hypernetworks map the global state to the mixer's weights; abs() keeps those weights
non-negative, so dQ_tot/dQ_a >= 0 and each agent's greedy action is the team's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class QMixer(nn.Module):
    def __init__(
        self, n_agents: int, state_dim: int, embed_dim: int = 32, hypernet_dim: int = 64
    ) -> None:
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim
        self.hyper_w1 = nn.Sequential(
            nn.Linear(state_dim, hypernet_dim),
            nn.ReLU(),
            nn.Linear(hypernet_dim, n_agents * embed_dim),
        )
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.hyper_w2 = nn.Sequential(
            nn.Linear(state_dim, hypernet_dim), nn.ReLU(), nn.Linear(hypernet_dim, embed_dim)
        )
        self.value = nn.Sequential(
            nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1)
        )

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """``agent_qs [B, T, N]``, ``states [B, T, S]`` -> ``Q_tot [B, T, 1]``."""
        b, t, n = agent_qs.shape
        s = states.reshape(b * t, -1)
        qs = agent_qs.reshape(b * t, 1, n)
        w1 = self.hyper_w1(s).abs().view(-1, n, self.embed_dim)
        b1 = self.hyper_b1(s).view(-1, 1, self.embed_dim)
        hidden = F.elu(torch.bmm(qs, w1) + b1)
        w2 = self.hyper_w2(s).abs().view(-1, self.embed_dim, 1)
        q_tot = torch.bmm(hidden, w2) + self.value(s).view(-1, 1, 1)
        return q_tot.view(b, t, 1)
