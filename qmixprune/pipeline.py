"""Jobs that the CLI and the Python API share: the search, with its outputs."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch.nn as nn

from .config import as_dict
from .data import DataSplits
from .pruning import plan_for_counts
from .report import plan_json, plot_rewards, write_json
from .search import SearchConfig, SearchResult, build_env, search


@contextlib.contextmanager
def progress_bar(total: int, label: str, quiet: bool):
    """A rich progress bar, or nothing under --quiet; yields ``update(advance, text)``."""
    if quiet:
        yield lambda advance=1, text="": None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cols = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*cols, transient=False) as bar:
        task = bar.add_task(label, total=total, info="")
        yield lambda advance=1, text="": bar.update(task, advance=advance, info=text)


def run_search(
    model: nn.Module,
    data: DataSplits,
    cfg: SearchConfig,
    out: Path | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> SearchResult:
    """QMIX search on ``model``; with ``out``: plan.json, search_log.jsonl, reward_curve.png,
    search_config.json and a checkpoint to resume from."""
    env = build_env(model, data, cfg.env, seed=cfg.seed)
    if out is not None:
        write_json(out / "search_config.json", as_dict(cfg))
    with progress_bar(cfg.episodes, "search", quiet) as update:

        def on_episode(entry: dict) -> None:
            update(1, f"best {entry['best']:.4f}  evals {entry['evaluations']}")

        result = search(env, cfg, out, resume=resume, on_episode=on_episode)
    if out is not None:
        plan = plan_for_counts(env.graph, result.counts, env.ranking)
        doc = plan_json(env.graph, plan, result.macs_ratio)
        doc.update(
            reward=result.reward,
            evaluations=result.evaluations,
            episodes=result.episodes,
            evaluations_per_second=result.evaluations / max(result.seconds, 1e-9),
        )
        write_json(out / "plan.json", doc)
        plot_rewards(result.log, out / "reward_curve.png")
    return result
