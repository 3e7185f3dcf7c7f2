"""Does pruning make YOLO faster on a CPU? YOLOv8n and YOLO11n (untrained, built from their
yaml: speed does not depend on the weights) pruned to 0.5 of the MACs (the same ratio for
every group, in multiples of --round-to channels, by L1), exported to ONNX and timed with
ONNX Runtime on this CPU at 320 and 640 px, batch 1 and 8, next to the ideal speed-up (1 /
MACs kept). The original and the pruned model take turns in blocks (``deploy.bench``).

    nice python benchmarks/yolo_speed.py [--models yolov8n,yolo11n] [--sizes 320,640]
        [--batches 1,8] [--runs 12] [--threads 2] [--json F]

The JSON file holds the command, the git revision, the load average before and after, the
device and one row per (model, size, batch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from provenance import revision

from qmixprune import analyze, count, export_onnx
from qmixprune.budget import Budget, CostModel, uniform_counts
from qmixprune.deploy.bench import bench
from qmixprune.importance import ranks
from qmixprune.pruning import apply_plan, plan_for_counts


def build(name: str) -> torch.nn.Module:
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(name + ".yaml", verbose=False).eval()
    model.model[-1].export = True  # the head returns its decoded boxes only, as deployed
    return model


def prune_to(model: torch.nn.Module, x: torch.Tensor, target: float, round_to: int):
    """``model`` pruned uniformly to ``target`` of its MACs; (pruned, MACs kept)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = analyze(model, x)
        budget = Budget(CostModel(model, graph, x), target_flops=target)
        names = [g.name for g in graph.prunable]
        counts = uniform_counts(budget, names, round_to)
        plan = plan_for_counts(graph, counts, ranks(model, graph.prunable, "l1"))
        pruned = apply_plan(model, graph, plan).eval()
    return pruned, count(pruned, x)[0] / count(model, x)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="yolov8n,yolo11n")
    p.add_argument("--sizes", default="320,640")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--runs", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    doc = {
        "command": " ".join(["python", "benchmarks/yolo_speed.py", *sys.argv[1:]]),
        "revision": revision(),
        "load_before": list(os.getloadavg()),
        "target": args.target,
        "round_to": args.round_to,
        "rows": [],
    }
    batches = [int(b) for b in args.batches.split(",")]
    print(f"{'model':<10} {'px':>4} {'batch':>5} {'orig ms':>9} {'pruned ms':>9} speed-up ideal")
    for name in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            model = build(name)
            x = torch.rand(1, 3, size, size)
            pruned, kept = prune_to(model, x, args.target, args.round_to)
            with tempfile.TemporaryDirectory() as d:
                paths = [str(Path(d) / f"{tag}.onnx") for tag in ("orig", "pruned")]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for m, path in zip((model, pruned), paths):
                        export_onnx(m, path, x)
                report = bench(
                    paths, batches, threads=args.threads, runs=args.runs, warmup=2, block=4
                )
            doc["device"] = report["device"]
            res = report["results"]
            for b in batches:
                orig, new = (r for r in res if r["batch"] == b)
                row = {
                    "model": name,
                    "size": size,
                    "batch": b,
                    "macs_kept": kept,
                    "ideal": 1 / kept,
                    "orig_p50_ms": orig["p50_ms"],
                    "pruned_p50_ms": new["p50_ms"],
                    "speedup": new["speedup"],
                }
                doc["rows"].append(row)
                print(
                    f"{name:<10} {size:>4} {b:>5} {orig['p50_ms']:>9.1f} {new['p50_ms']:>9.1f} "
                    f"{new['speedup']:>6.2f}x {1 / kept:.2f}x (MACs kept {kept:.3f})",
                    flush=True,
                )
            doc["load_after"] = list(os.getloadavg())
            if args.json:  # after every size: an interrupted run keeps what it measured
                Path(args.json).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
