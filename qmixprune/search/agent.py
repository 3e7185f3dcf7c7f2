"""The agent network, shared by all agents (pymarl's RNN agent)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RNNAgent(nn.Module):
    """Input: own observation + one-hot agent id + one-hot last action.
    Linear -> ReLU -> GRUCell -> Linear(n_actions)."""

    def __init__(self, input_dim: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.hidden = hidden
        self.fc1 = nn.Linear(input_dim, hidden)
        self.rnn = nn.GRUCell(hidden, hidden)
        self.fc2 = nn.Linear(hidden, n_actions)

    def init_hidden(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.hidden)

    def forward(self, inputs: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.rnn(F.relu(self.fc1(inputs)), h)
        return self.fc2(h), h


def agent_inputs(obs: torch.Tensor, last_actions: torch.Tensor, n_actions: int) -> torch.Tensor:
    """``obs [..., N, D]`` and ``last_actions [..., N]`` -> ``[..., N, D + N + n_actions]``."""
    n = obs.shape[-2]
    ids = torch.eye(n).expand(*obs.shape[:-1], n)
    return torch.cat([obs, ids, F.one_hot(last_actions, n_actions).float()], -1)
