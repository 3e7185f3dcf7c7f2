"""qmixprune: structured filter pruning searched by multi-agent RL (QMIX), for deployment.

Heavy modules (torch) are imported lazily so that ``qmixprune.deploy.bench`` runs on an edge
device that has only onnxruntime and numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "analyze": "qmixprune.graph",
    "Graph": "qmixprune.graph",
    "prune": "qmixprune.pruning",
    "Plan": "qmixprune.pruning",
    "make_plan": "qmixprune.pruning",
    "apply_plan": "qmixprune.pruning",
    "count": "qmixprune.flops",
    "layer_table": "qmixprune.flops",
    "save": "qmixprune.serialize",
    "load": "qmixprune.serialize",
    "load_model_file": "qmixprune.serialize",
    "UserError": "qmixprune.errors",
    "compress": "qmixprune.run.compress",
    "CompressConfig": "qmixprune.run.config",
    "export_onnx": "qmixprune.deploy.export",
}

__all__ = [
    "CompressConfig",
    "Graph",
    "Plan",
    "UserError",
    "__version__",
    "analyze",
    "apply_plan",
    "compress",
    "count",
    "export_onnx",
    "layer_table",
    "load",
    "load_model_file",
    "make_plan",
    "prune",
    "save",
]

if TYPE_CHECKING:
    from .deploy.export import export_onnx
    from .errors import UserError
    from .flops import count, layer_table
    from .graph import Graph, analyze
    from .pruning import Plan, apply_plan, make_plan, prune
    from .run.compress import compress
    from .run.config import CompressConfig
    from .serialize import load, load_model_file, save


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qmixprune' has no attribute {name!r}")
