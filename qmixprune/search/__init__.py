"""The multi-agent search: QMIX agents pick per-group pruning increments."""

from .env import EnvConfig, PruningEnv, build_env
from .learner import QLearner, QmixConfig
from .mixer import QMixer
from .runner import SearchConfig, SearchResult, search

__all__ = [
    "EnvConfig",
    "PruningEnv",
    "QLearner",
    "QMixer",
    "QmixConfig",
    "SearchConfig",
    "SearchResult",
    "build_env",
    "search",
]
