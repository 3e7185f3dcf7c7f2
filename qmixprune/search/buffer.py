"""Episode replay buffer: fixed-length episodes stored as named tensors."""

from __future__ import annotations

import torch


class EpisodeBuffer:
    """Keeps the last ``capacity`` episodes. Fields (T = steps):
    obs [T+1, N, D], state [T+1, S], actions [T, N], reward [T], done [T]."""

    FIELDS = ("obs", "state", "actions", "last_actions", "reward", "done")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data: dict[str, list[torch.Tensor]] = {f: [] for f in self.FIELDS}

    def __len__(self) -> int:
        return len(self.data["reward"])

    def add(self, episode: dict[str, torch.Tensor]) -> None:
        for f in self.FIELDS:
            self.data[f].append(episode[f])
            if len(self.data[f]) > self.capacity:
                self.data[f].pop(0)

    def sample(self, batch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(self), (min(batch, len(self)),), generator=gen).tolist()
        return {f: torch.stack([self.data[f][i] for i in idx]) for f in self.FIELDS}

    def rewards(self) -> torch.Tensor:
        return torch.stack(self.data["reward"]) if len(self) else torch.zeros(0)

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "data": {f: list(v) for f, v in self.data.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self.capacity = sd["capacity"]
        self.data = {f: list(sd["data"][f]) for f in self.FIELDS}
