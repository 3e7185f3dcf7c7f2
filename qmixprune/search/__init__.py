"""The multi-agent search: QMIX agents pick per-group pruning increments."""

from .baselines import BASELINES
from .env import EnvConfig, PruningEnv, build_env
from .evaluator import PlanEvaluator
from .learner import QLearner, QmixConfig
from .mixer import QMixer
from .runner import SearchConfig, SearchFiles, SearchResult, SearchRun, search

__all__ = [
    "BASELINES",
    "EnvConfig",
    "PlanEvaluator",
    "PruningEnv",
    "QLearner",
    "QMixer",
    "QmixConfig",
    "SearchConfig",
    "SearchFiles",
    "SearchResult",
    "SearchRun",
    "build_env",
    "search",
]
