"""``CompressConfig``: every option of one ``compress`` run, over the stages' own configs.

Layered as defaults <- ``--preset`` <- ``--config`` file <- command-line flags (see
``config.build``/``merge``); the CLI's options are generated from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..distill import DistillConfig
from ..errors import UserError
from ..search import SearchConfig
from ..search.pick import PickConfig

PLANS = ("search", "uniform", "global")


@dataclass(frozen=True)
class CompressConfig:
    """Every option of ``compress``; the targets, seed and importance override the stages'.
    ``target_flops`` None with a ``target_latency`` means a latency-only budget."""

    target_flops: float | None = 0.4  # fraction of the MACs kept (None: no FLOPs target)
    target_latency: float | None = None  # fraction of the measured latency kept (needs a table)
    seed: int = 0  # seeds the search, the val split and fine-tuning (overrides the stages')
    importance: str = "l1"  # filter ranking: l1, l2, fpgm, bn_scale or random
    # which plan is fine-tuned: search (QMIX, then the final pick), uniform (every group
    # pruned alike) or global (one L1 threshold across groups); the last two skip the search
    plan: str = "search"
    search: SearchConfig = field(default_factory=SearchConfig)
    pick: PickConfig = field(default_factory=PickConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    export: bool = True  # write model.onnx and time it against the original (ONNX Runtime)
    int8: bool = False  # also model.int8.onnx (Q/DQ, calibrated on training batches)
    bench_runs: int = 50  # timed runs per model and batch size for the report's latency
    allow_untrained: bool = False  # go on when the teacher's test accuracy is at chance level
    keep_checkpoints: bool = False  # keep the search/distillation checkpoints after success
    device: str = "auto"  # auto (the local GPU when one is visible, else cpu), cpu, cuda, cuda:N

    def validate(self) -> None:
        if self.plan not in PLANS:
            raise UserError(f"plan must be one of {list(PLANS)}, got {self.plan!r}")
        self.pick.validate()

    def resolved(self) -> CompressConfig:
        """The config with the top-level target, seed and importance pushed into the stages."""
        env = replace(
            self.search.env,
            target_flops=self.target_flops,
            target_latency=self.target_latency,
            importance=self.importance,
        )
        search_cfg = replace(self.search, seed=self.seed, env=env)
        return replace(self, search=search_cfg, distill=replace(self.distill, seed=self.seed))
