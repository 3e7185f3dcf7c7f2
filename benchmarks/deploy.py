"""Does pruning make deployed models faster? Original vs pruned CIFAR VGG-16, ResNet-56 and
(with --models) torchvision's MobileNetV2 at 0.4 of the MACs with ONNX Runtime on this CPU at
batch 1 and 32, next to accuracy (digits-trained models, pruned and BN-recalibrated, no
fine-tuning) and the ideal speed-up (1 / MACs kept). With --int8 the original and the
aligned plans are also timed as INT8 Q/DQ models (static quantization calibrated on 8
training batches; accuracy from ONNX Runtime).

Plans: uniform with widths unaligned, in multiples of 8, and in the multiple that
`qmixprune profile` measured this device to reward; the QMIX plan for the FLOPs target
(rounded to that multiple); and a QMIX plan searched for a *latency* target equal to the
FLOPs plan's measured latency (closed loop: when the latency plan measures more than 2 %
slower or 3 % faster, the target is scaled by the measured ratio and the search runs again).

    python benchmarks/deploy.py [--quick] [--threads 2] [--models vgg16,resnet56,mobilenet_v2]
                                [--int8] [--epochs 12] [--json F]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from qmixprune import analyze, count, export_onnx, load, save
from qmixprune.budget import Budget, CostModel, reachable_round_to, uniform_counts
from qmixprune.data import load_data
from qmixprune.demo import cache_dir
from qmixprune.deploy.bench import bench
from qmixprune.deploy.profile import profile
from qmixprune.deploy.quantize import quantize_checked
from qmixprune.errors import UserError
from qmixprune.importance import ranks
from qmixprune.latency import LatencyModel
from qmixprune.models import create
from qmixprune.pruning import apply_plan, plan_for_counts
from qmixprune.search import EnvConfig, SearchConfig, build_env, search
from qmixprune.train import TrainConfig, accuracy, loader, recalibrate_bn, train

ARCHS = {"mobilenet_v2": "torchvision:mobilenet_v2"}  # short names for --models


def teacher(name: str, data, epochs: int):
    path = cache_dir() / f"deploy-{name}-digits-e{epochs}.safetensors"
    if path.is_file():
        return load(path)
    torch.manual_seed(0)
    model = create(ARCHS.get(name, name), num_classes=10)
    train(model, data.train, TrainConfig(epochs=epochs, lr=0.05), hflip=False)
    save(model, path)
    return model.eval()


def onnx_of(model, graph, counts, order, path, x, data=None):
    """The pruned model and its ONNX file; with ``data``, BN is recalibrated on its training
    batches *before* the export, so the file (and an INT8 model quantized from it) is the
    model whose accuracy is reported (timing alone does not need it)."""
    pruned = apply_plan(model, graph, plan_for_counts(graph, counts, order))
    if data is not None:
        recalibrate_bn(pruned, loader(data.train, 64, True, 0))
    return pruned, export_onnx(pruned, path, x).path


def measured_ratio(a: Path, b: Path, batch: int, threads: int, runs: int) -> float:
    """Latency of b over a, measured taking turns."""
    rows = bench([str(a), str(b)], (batch,), threads=threads, runs=runs)["results"]
    return 1.0 / rows[1]["speedup"]


def qmix_pair(model, graph, order, data, table, latency, mult, seed, episodes, runs, args):
    """The QMIX plan for the FLOPs target, and one for a latency target that measures equal
    to it (closed loop, at most 3 searches)."""
    x = torch.zeros(1, 3, 32, 32)
    env = build_env(model, data, EnvConfig(target_flops=args.target, round_to=mult), seed=seed)
    flops_plan = search(env, SearchConfig(episodes=episodes, seed=seed)).counts
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        _, flops_file = onnx_of(model, graph, flops_plan, order, d / "f.onnx", x)
        target, loop, kept = latency.ratio(flops_plan), [], None
        for _ in range(3):
            cfg = EnvConfig(target_flops=None, target_latency=target)
            env = build_env(model, data, cfg, seed=seed, latency_table=table)
            counts = search(env, SearchConfig(episodes=episodes, seed=seed)).counts
            _, lat_file = onnx_of(model, graph, counts, order, d / "l.onnx", x)
            ratio = measured_ratio(
                flops_file, lat_file, args.profile_batch, args.threads, runs // 2
            )
            loop.append({"target": target, "measured_vs_flops_plan": ratio})
            print(f"  seed {seed}: latency target {target:.3f}: {ratio:.3f}x the FLOPs plan's")
            if ratio <= 1.02 or kept is None:
                kept = counts  # the last plan not slower than the FLOPs plan
            if 0.97 <= ratio <= 1.02:
                break
            target /= ratio  # slower: tighten; faster: spend the slack
    return flops_plan, kept, loop


def summarize(rows: list[dict]) -> list[str]:
    """Mean accuracy and batch-32 speed-up of the QMIX plans over seeds, per target."""
    import numpy as np

    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        for kind in ("qmix-flops", "qmix-latency"):
            picked = [
                r
                for r in rows
                if r["model"] == name
                and r["plan"].startswith(kind + "-")
                and not r["plan"].endswith("-int8")
            ]
            b32 = [r["speedup"] for r in picked if r["batch"] == 32]
            b1 = [r["speedup"] for r in picked if r["batch"] == 1]
            accs = [r["acc"] for r in picked if r["batch"] == 32]
            if accs:
                lines.append(
                    f"{name:<9} {kind:<13} over {len(accs)} seeds: acc {np.mean(accs):.4f} "
                    f"({min(accs):.4f}-{max(accs):.4f}), MACs "
                    f"{np.mean([r['macs'] for r in picked]):.3f}, speed-up batch 1 "
                    f"{np.mean(b1):.2f}x, batch 32 {np.mean(b32):.2f}x"
                )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", default="vgg16,resnet56")
    p.add_argument("--target", type=float, default=0.4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, default=1, help="QMIX searches per target")
    p.add_argument("--profile-batch", type=int, default=32, help="batch the latency table is for")
    p.add_argument(
        "--int8", action="store_true", help="INT8 rows for the original and aligned plans"
    )
    p.add_argument("--epochs", type=int, default=12, help="teacher training epochs (cached)")
    p.add_argument("--json")
    args = p.parse_args()
    episodes, runs = (40, 60) if args.quick else (120, 200)
    data = load_data("digits")
    x = torch.zeros(1, 3, 32, 32)
    samples = [data.train[i] for i in range(len(data.train))]
    int8_data = (samples, [data.test[i] for i in range(len(data.test))])
    rows, loops, int8_failed = [], {}, {}
    for name in args.models.split(","):
        model = teacher(name, data, epochs=args.epochs)
        graph = analyze(model, x)
        cost = CostModel(model, graph, x)
        groups = [g.name for g in graph.prunable]
        order = ranks(model, graph.prunable, "l1")
        table = profile(model, cost, x, threads=args.threads, batch=args.profile_batch, runs=20)
        # the profiled multiple, or a finer one where it puts 0.4 out of reach (ResNet-56's
        # 16-channel stage cannot be pruned in multiples of 16)
        mult = reachable_round_to(Budget(cost, args.target), groups, table["round_to"], 1, 0.05)
        costs = {a: round(c, 2) for a, c in table["alignment"].items()}
        print(f"{name}: profiled multiple {table['round_to']}, used {mult}; time/MAC {costs}")
        latency = LatencyModel(table, cost)
        plans = {
            "uniform": uniform_counts(Budget(cost, args.target), groups, round_to=1),
            "uniform-r8": uniform_counts(Budget(cost, args.target), groups, round_to=8),
            f"uniform-r{mult}": uniform_counts(Budget(cost, args.target), groups, round_to=mult),
        }
        loops[name] = {}
        for seed in range(args.seeds):
            flops_plan, latency_plan, loop = qmix_pair(
                model, graph, order, data, table, latency, mult, seed, episodes, runs, args
            )
            plans[f"qmix-flops-s{seed}"], plans[f"qmix-latency-s{seed}"] = flops_plan, latency_plan
            loops[name][seed] = loop
        with tempfile.TemporaryDirectory() as d:
            files = [export_onnx(model, Path(d) / "original.onnx", x).path]
            accs = {"original": accuracy(model, data.test)}
            macs = {"original": 1.0}
            for plan_name, counts in plans.items():
                onnx_path = Path(d) / f"{plan_name}.onnx"
                pruned, f = onnx_of(model, graph, counts, order, onnx_path, x, data)
                accs[plan_name] = accuracy(pruned, data.test)
                macs[plan_name] = count(pruned, x)[0] / count(model, x)[0]
                files.append(f)
            if args.int8:
                for plan_name in ["original", *[n for n in plans if n != "uniform"]]:
                    src = Path(d) / f"{plan_name}.onnx"
                    try:
                        q = quantize_checked(src, Path(d) / f"{plan_name}-int8.onnx", *int8_data)
                    except UserError as exc:  # failed the parity check: say so, go on
                        int8_failed[f"{name}/{plan_name}"] = str(exc)
                        print(f"{name:<12} {plan_name}-int8: not timed: {exc}", flush=True)
                        continue
                    accs[f"{plan_name}-int8"] = q.int8_acc
                    macs[f"{plan_name}-int8"] = macs[plan_name]
                    files.append(q.path)
            report = bench([str(f) for f in files], (1, 32), threads=args.threads, runs=runs)
        for r in report["results"]:
            plan_name = Path(r["model"]).stem
            fp32_plan = plan_name.removesuffix("-int8")
            row = {
                "model": name,
                "plan": plan_name,
                "macs": macs[plan_name],
                "ideal": 1.0 / macs[plan_name],
                "acc": accs[plan_name],
                "batch": r["batch"],
                "p50_ms": r["p50_ms"],
                "speedup": r["speedup"],
                "predicted_latency": latency.ratio(plans.get(fp32_plan, {})),
                "round_to": mult,
                "profiled_round_to": table["round_to"],
            }
            rows.append(row)
            print(
                f"{name:<12} {plan_name:<21} MACs {row['macs']:.3f}  acc {row['acc']:.4f}  "
                f"batch {r['batch']:>2}  p50 {r['p50_ms']:8.3f} ms  speed-up "
                f"{r['speedup']:.2f}x  ideal {row['ideal']:.2f}x  (predicted fp32 at batch "
                f"{args.profile_batch}: {1 / row['predicted_latency']:.2f}x)",
                flush=True,
            )
    summary = summarize(rows)
    for line in summary:
        print(line)
    if args.json:
        doc = {
            "device": report["device"],
            "threads": args.threads,
            "rows": rows,
            "loops": loops,
            "int8_failed": int8_failed,
            "summary": summary,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
