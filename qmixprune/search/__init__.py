"""The multi-agent search: QMIX agents pick per-group pruning increments."""

from .baselines import BASELINES
from .env import EnvConfig, PruningEnv, build_env
from .evaluator import PlanEvaluator
from .learner import QLearner, QmixConfig
from .mixer import QMixer
from .runner import SearchConfig, SearchResult, search

__all__ = [
    "BASELINES",
    "EnvConfig",
    "PlanEvaluator",
    "PruningEnv",
    "QLearner",
    "QMixer",
    "QmixConfig",
    "SearchConfig",
    "SearchResult",
    "build_env",
    "search",
]
