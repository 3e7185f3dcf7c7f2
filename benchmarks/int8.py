"""Prune + INT8 on the CPU: digits VGG-16 (trained, cached) pruned uniformly to --target of
the MACs with widths in multiples of --round-to (BN recalibrated, no fine-tuning), then
quantized (static Q/DQ, per-channel weights, 8 calibration batches of training images).
The original and the pruned model, each in fp32 and INT8, are timed side by side with
ONNX Runtime (taking turns; speed-ups over the fp32 original) and their test accuracies
measured in ONNX Runtime.

Goal (issue 13): at batch 32, the INT8 pruned model >= 5x faster than the fp32 original,
its accuracy within 1 point of the fp32 pruned model's.

    python benchmarks/int8.py [--epochs 12 | --teacher FILE] [--threads 2] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from qmixprune import analyze, export_onnx, load
from qmixprune.budget import Budget, CostModel, uniform_counts
from qmixprune.data import load_data
from qmixprune.deploy.bench import bench, format_results
from qmixprune.deploy.quantize import quantize_checked
from qmixprune.importance import ranks
from qmixprune.pruning import apply_plan, plan_for_counts
from qmixprune.train import loader, recalibrate_bn

sys.path.insert(0, str(Path(__file__).parent))
from deploy import teacher  # noqa: E402  (the same cached teachers as deploy.py)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg16")
    p.add_argument("--epochs", type=int, default=12, help="teacher training epochs (cached)")
    p.add_argument("--teacher", help="a trained model file to use instead (e.g. the demo's)")
    p.add_argument("--target", type=float, default=0.4)
    p.add_argument("--round-to", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--json")
    args = p.parse_args()
    data = load_data("digits")
    x = torch.zeros(1, 3, 32, 32)
    model = load(args.teacher).eval() if args.teacher else teacher(args.model, data, args.epochs)
    graph = analyze(model, x)
    cost = CostModel(model, graph, x)
    groups = [g.name for g in graph.prunable]
    counts = uniform_counts(Budget(cost, args.target), groups, round_to=args.round_to)
    order = ranks(model, graph.prunable, "l1")
    pruned = apply_plan(model, graph, plan_for_counts(graph, counts, order))
    recalibrate_bn(pruned, loader(data.train, 64, True, 0))
    train = [data.train[i] for i in range(len(data.train))]
    test = [data.test[i] for i in range(len(data.test))]
    accs, checks = {}, {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        files = {}
        for name, m in (("original", model), ("pruned", pruned)):
            files[name] = export_onnx(m, d / f"{name}.onnx", x).path
            q = quantize_checked(files[name], d / f"{name}-int8.onnx", train, test)
            files[f"{name}-int8"] = q.path
            accs[name], accs[f"{name}-int8"] = q.fp32_acc, q.int8_acc
            checks[name] = {"agreement": q.agreement, "relative_rms": q.relative_rms}
            print(q.summary(), flush=True)
        order_ = ["original", "original-int8", "pruned", "pruned-int8"]
        report = bench(
            [str(files[n]) for n in order_], (1, 32), threads=args.threads, runs=args.runs
        )
    print(format_results(report))
    macs = cost.ratio(counts)
    rows = []
    for r in report["results"]:
        name = Path(r["model"]).stem
        rows.append(
            {
                "model": name,
                "batch": r["batch"],
                "p50_ms": r["p50_ms"],
                "speedup": r["speedup"],
                "acc": accs[name],
                "macs": 1.0 if name.startswith("original") else macs,
            }
        )
        print(
            f"{name:<14} batch {r['batch']:>2}  acc {accs[name]:.4f}  speed-up over fp32 "
            f"original {r['speedup']:.2f}x  (MACs {rows[-1]['macs']:.3f})"
        )
    b32 = {r["model"]: r for r in rows if r["batch"] == 32}
    fast, close = b32["pruned-int8"]["speedup"], accs["pruned-int8"] - accs["pruned"]
    print(
        f"goal: INT8 pruned {fast:.2f}x (>= 5x: {fast >= 5}); accuracy vs fp32 pruned "
        f"{close:+.4f} (within 1 point: {abs(close) <= 0.01})"
    )
    if args.json:
        doc = {"args": vars(args), "device": report["device"], "rows": rows, "checks": checks}
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
