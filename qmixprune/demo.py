"""``qmixprune demo``: the embedded default job, with no model and no data to supply.

Trains a CIFAR VGG-16 (width 0.5) on scikit-learn's bundled digits (cached after the
first run), prunes it to the FLOPs target, recalibrates BatchNorm, fine-tunes briefly and
writes the pruned model and a report.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from . import __version__, models, serialize
from .budget import CostModel, uniform_counts
from .data import load_data
from .errors import UserError
from .flops import count
from .graph import analyze
from .importance import ranks
from .pruning import apply_plan, plan_for_counts
from .train import TrainConfig, evaluate, loader, recalibrate_bn, train


def cache_dir() -> Path:
    return Path(os.environ.get("QMIXPRUNE_CACHE", Path.home() / ".cache" / "qmixprune"))


def digits_teacher(seed: int, epochs: int, log=print):
    """A VGG-16 (width 0.5) trained on digits, from the cache when it was trained before."""
    data = load_data("digits", seed=seed)
    path = cache_dir() / f"vgg16-w0.5-digits-seed{seed}-e{epochs}-lr0.1.safetensors"
    if path.is_file():
        try:
            return serialize.load(path), data
        except UserError:
            path.unlink()  # a damaged cache entry is retrained, not trusted
    log(f"training VGG-16 (width 0.5) on digits for {epochs} epochs (cached at {path})")
    torch.manual_seed(seed)
    model = models.create("vgg16", num_classes=data.num_classes, width=0.5)
    train(
        model,
        data.train,
        TrainConfig(epochs=epochs, lr=0.1, seed=seed),
        hflip=False,
        on_epoch=lambda e, loss: log(f"  epoch {e + 1}/{epochs} loss {loss:.3f}"),
    )
    serialize.save(model, path)
    return model, data


def run_demo(args) -> int:
    log = (lambda *a: None) if args.quiet else print
    if not 0 < args.target_flops < 1:
        raise UserError(f"--target-flops must be in (0, 1), got {args.target_flops}")
    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} exists and is not empty: pass --overwrite or choose another -o")
    t0 = time.time()
    teacher, data = digits_teacher(args.seed, epochs=3 if args.quick else 6, log=log)
    x = torch.zeros(1, *data.input_shape)
    graph = analyze(teacher, x)
    cost = CostModel(teacher, graph, x)
    counts = uniform_counts(cost, [g.name for g in graph.prunable], args.target_flops, round_to=8)
    plan = plan_for_counts(graph, counts, ranks(teacher, graph.prunable, "l1"))
    student = apply_plan(teacher, graph, plan)
    recalibrate_bn(student, loader(data.train, 64, shuffle=True, seed=args.seed))
    acc_recal = evaluate(student, data.val)
    epochs = 2 if args.quick else 4
    log(
        f"pruned to {cost.ratio(counts):.3f} of the MACs; val acc after BN recalibration "
        f"{acc_recal:.3f}; fine-tuning {epochs} epochs"
    )
    train(student, data.train, TrainConfig(epochs=epochs, lr=0.01, seed=args.seed), hflip=False)
    report = _report(teacher, student, data, x, args, counts, time.time() - t0)
    _write_outputs(out, student, report)
    o, p = report["original"], report["pruned"]
    log(
        f"MACs {o['macs']:,} -> {p['macs']:,} ({p['macs'] / o['macs']:.3f}); "
        f"test acc {o['test_acc']:.4f} -> {p['test_acc']:.4f}; wrote {out}/"
    )
    return 0


def _report(teacher, student, data, x, args, counts, seconds) -> dict:
    (m0, p0), (m1, p1) = count(teacher, x), count(student, x)
    return {
        "target_flops": args.target_flops,
        "method": "uniform-l1 (demo)",
        "original": {"macs": m0, "params": p0, "test_acc": evaluate(teacher, data.test)},
        "pruned": {"macs": m1, "params": p1, "test_acc": evaluate(student, data.test)},
        "channels": counts,
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "versions": {"qmixprune": __version__, "torch": torch.__version__},
    }


def _write_outputs(out: Path, model, report: dict) -> None:
    """Write into a temporary sibling folder, then swap it in: never half a result."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    serialize.save(model, tmp / "model.safetensors")
    (tmp / "report.json").write_text(json.dumps(report, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
