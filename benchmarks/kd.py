"""Knowledge distillation vs plain cross-entropy fine-tuning of the same pruned network.

VGG-16 (width 0.5) trained on the bundled digits, pruned uniformly (L1) to ``--target`` of
its MACs and BN-recalibrated; then the same epochs, LR and seed with KD (alpha, T) and
with CE (alpha = 0). Accuracy per epoch on val and, at the end, on test.

    python benchmarks/kd.py [--target 0.2] [--epochs 6] [--seeds 0,1] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from qmixprune import analyze
from qmixprune.budget import Budget, CostModel, uniform_counts
from qmixprune.demo import QUICK_TEACHER_EPOCHS, digits_teacher
from qmixprune.distill import DistillConfig, distill
from qmixprune.importance import ranks
from qmixprune.pruning import apply_plan, plan_for_counts
from qmixprune.train import accuracy, loader, recalibrate_bn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--json")
    args = p.parse_args()
    teacher, data = digits_teacher(0, epochs=QUICK_TEACHER_EPOCHS)
    x = torch.zeros(1, *data.input_shape)
    graph = analyze(teacher, x)
    counts = uniform_counts(
        Budget(CostModel(teacher, graph, x), args.target), [g.name for g in graph.prunable]
    )
    plan = plan_for_counts(graph, counts, ranks(teacher, graph.prunable, "l1"))
    print(f"teacher test {accuracy(teacher, data.test):.4f}; pruned to {args.target} of the MACs")
    results = {}
    for method, alpha in (("kd", args.alpha), ("ce", 0.0)):
        runs = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            student = apply_plan(teacher, graph, plan)
            recalibrate_bn(student, loader(data.train, 64, True, seed))
            start = accuracy(student, data.val)
            cfg = DistillConfig(
                epochs=args.epochs, lr=args.lr, alpha=alpha, temperature=args.temperature, seed=seed
            )
            student, hist = distill(student, teacher, data, cfg)
            runs.append(
                {
                    "seed": seed,
                    "start_val": start,
                    "val": [h["val_acc"] for h in hist],
                    "test": accuracy(student, data.test),
                }
            )
        results[method] = runs
    print(f"\n{'epoch':<6} {'KD val':>8} {'CE val':>8}   (mean over seeds)")
    for e in range(args.epochs):
        kd = statistics.mean(r["val"][e] for r in results["kd"])
        ce = statistics.mean(r["val"][e] for r in results["ce"])
        print(f"{e + 1:<6} {kd:>8.4f} {ce:>8.4f}")
    kd_t = statistics.mean(r["test"] for r in results["kd"])
    ce_t = statistics.mean(r["test"] for r in results["ce"])
    print(f"{'test':<6} {kd_t:>8.4f} {ce_t:>8.4f}")
    print(
        f"\n{'KD' if kd_t > ce_t else 'CE' if ce_t > kd_t else 'neither'} ends ahead on test "
        f"({kd_t - ce_t:+.4f}); digits' 359 test images make 0.003 one image."
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"target": args.target, **results}, indent=2))


if __name__ == "__main__":
    main()
