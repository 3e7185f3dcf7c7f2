"""``compress --preset``: run sizes, from a quick look to a long search.

A preset is a layer of config values between the dataclass defaults and a ``--config``
file (flags override both): defaults <- preset <- config file <- flags. ``default`` adds
nothing. Times measured on 2 CPU cores are in docs/benchmarks.md.
"""

from __future__ import annotations

from ..errors import UserError

PRESETS: dict[str, dict] = {
    # a first look: a short search and a few epochs
    "quick": {
        "search": {
            "episodes": 40,
            "patience": 20,
            "env": {"reward_batches": 2, "calib_batches": 4},
        },
        "distill": {"epochs": 3},
        # the final pick in proportion: about 80 distillation steps, not the default's 400
        # (more than 3 epochs of fine-tuning on the digits demo)
        "pick": {"top_k": 4, "steps": 10},
    },
    # the config dataclasses' own defaults
    "default": {},
    # a longer search, never stopped early, and longer fine-tuning: for the result you ship
    "thorough": {"search": {"episodes": 400, "patience": 0}, "distill": {"epochs": 30}},
}


def preset(name: str | None) -> dict:
    """The config layer of preset ``name`` (empty for None)."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {list(PRESETS)}")
    return PRESETS[name]


def config(name: str, **overrides):
    """The ``CompressConfig`` of preset ``name`` (for the Python API), with ``overrides``
    of its top-level fields (``target_flops=0.5``, ``allow_untrained=True``, ...)."""
    from dataclasses import replace

    from ..config import build
    from .config import CompressConfig

    return replace(build(CompressConfig, preset(name)), **overrides)


def sizes(name: str) -> dict:
    """episodes, max_evaluations, patience and epochs of preset ``name``, defaults filled in."""
    from ..config import build
    from .config import CompressConfig

    cfg = build(CompressConfig, preset(name))
    return {
        "episodes": cfg.search.episodes,
        "max_evaluations": cfg.search.max_evaluations,
        "patience": cfg.search.patience,
        "epochs": cfg.distill.epochs,
    }
