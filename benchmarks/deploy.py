"""Does pruning make deployed models faster? Original vs pruned CIFAR VGG-16 and ResNet-56
at 0.4 of the MACs: uniform (unaligned, and rounded to multiples of 8), the QMIX plan,
and a plan searched for the same *measured latency* as the QMIX FLOPs plan, with ONNX
Runtime on this CPU at batch 1 and 32, next to accuracy (digits-trained models, pruned and
BN-recalibrated, no fine-tuning).

    python benchmarks/deploy.py [--quick] [--threads 2] [--json F]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from qmixprune import analyze, count, export_onnx, load, save
from qmixprune.bench import bench
from qmixprune.budget import Budget, CostModel, uniform_counts
from qmixprune.data import load_data
from qmixprune.demo import cache_dir
from qmixprune.importance import ranks
from qmixprune.latency import LatencyModel, profile
from qmixprune.models import create
from qmixprune.pruning import apply_plan, plan_for_counts
from qmixprune.search import EnvConfig, SearchConfig, build_env, search
from qmixprune.train import TrainConfig, evaluate, loader, recalibrate_bn, train


def teacher(name: str, data, epochs: int):
    path = cache_dir() / f"deploy-{name}-digits-e{epochs}.safetensors"
    if path.is_file():
        return load(path)
    torch.manual_seed(0)
    model = create(name, num_classes=10)
    train(model, data.train, TrainConfig(epochs=epochs, lr=0.05), hflip=False)
    save(model, path)
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", default="vgg16,resnet56")
    p.add_argument("--target", type=float, default=0.4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    episodes, runs = (40, 30) if args.quick else (150, 100)
    data = load_data("digits")
    x = torch.zeros(1, 3, 32, 32)
    rows = []
    for name in args.models.split(","):
        model = teacher(name, data, epochs=4 if args.quick else 8)
        graph = analyze(model, x)
        cost = CostModel(model, graph, x)
        groups = [g.name for g in graph.prunable]
        order = ranks(model, graph.prunable, "l1")
        table = profile(model, cost, x, threads=args.threads, runs=10 if args.quick else 20)
        latency = LatencyModel(table, cost)
        plans = {
            "uniform": uniform_counts(Budget(cost, args.target), groups, round_to=1),
            "uniform-r8": uniform_counts(Budget(cost, args.target), groups, round_to=8),
        }
        env = build_env(model, data, EnvConfig(target_flops=args.target, round_to=8))
        plans["qmix-flops"] = search(env, SearchConfig(episodes=episodes)).counts
        same_latency = latency.ratio(plans["qmix-flops"])
        env = build_env(
            model,
            data,
            EnvConfig(target_flops=None, target_latency=same_latency, round_to=8),
            latency_table=table,
        )
        plans["qmix-latency"] = search(env, SearchConfig(episodes=episodes)).counts
        with tempfile.TemporaryDirectory() as d:
            files = [export_onnx(model, Path(d) / "original.onnx", x).path]
            accs = {"original": evaluate(model, data.test)}
            macs = {"original": 1.0}
            for plan_name, counts in plans.items():
                pruned = apply_plan(model, graph, plan_for_counts(graph, counts, order))
                recalibrate_bn(pruned, loader(data.train, 64, True, 0))
                accs[plan_name] = evaluate(pruned, data.test)
                macs[plan_name] = count(pruned, x)[0] / count(model, x)[0]
                files.append(export_onnx(pruned, Path(d) / f"{plan_name}.onnx", x).path)
            report = bench([str(f) for f in files], (1, 32), threads=args.threads, runs=runs)
        for r in report["results"]:
            plan_name = Path(r["model"]).stem
            row = {
                "model": name,
                "plan": plan_name,
                "macs": macs[plan_name],
                "acc": accs[plan_name],
                "batch": r["batch"],
                "p50_ms": r["p50_ms"],
                "speedup": r["speedup"],
                "predicted_latency": latency.ratio(plans.get(plan_name, {})),
            }
            rows.append(row)
            print(
                f"{name:<9} {plan_name:<13} MACs {row['macs']:.3f}  acc {row['acc']:.4f}  "
                f"batch {r['batch']:>2}  p50 {r['p50_ms']:8.3f} ms  speed-up "
                f"{r['speedup']:.2f}x  (predicted {1 / row['predicted_latency']:.2f}x)",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"device": report["device"], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
