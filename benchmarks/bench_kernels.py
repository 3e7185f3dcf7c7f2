"""Native kernels vs the PyTorch reference path (and Torch-Pruning where it does the same
operation), side by side in one run: importance of every layer (L1, L2, FPGM) and removal
of a 50 % plan, for CIFAR VGG-16, torchvision ResNet-50 and MobileNetV2. Medians of repeats.

    python benchmarks/bench_kernels.py [--repeats 7] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from qmixprune import analyze, make_plan, native, ops
from qmixprune.importance import filter_rows
from qmixprune.models import create
from qmixprune.pruning import plan_cuts

MODELS = {
    "vgg16": (lambda: create("vgg16"), 32),
    "resnet50": (lambda: create("torchvision:resnet50"), 64),
    "mobilenet_v2": (lambda: create("torchvision:mobilenet_v2"), 64),
}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_pruning_rows(model, x, repeats):
    """Torch-Pruning's own importance and removal timings, where it is installed."""
    try:
        import torch_pruning as tp
    except ImportError:
        return {}
    out = {}
    for op, imp in (
        ("l1", tp.importance.MagnitudeImportance(p=1)),
        ("l2", tp.importance.MagnitudeImportance(p=2)),
        ("fpgm", tp.importance.FPGMImportance()),
    ):
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        groups = list(dg.get_all_groups(root_module_types=[torch.nn.Conv2d, torch.nn.Linear]))
        out[op] = median_time(lambda: [imp(g) for g in groups], repeats)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json")
    args = p.parse_args()
    if not native.available():
        raise SystemExit("the native extension is not built: pip install --no-build-isolation -e .")
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{'model':<14} {'op':<10} {'native ms':>10} {'reference ms':>13} {'ratio':>7} {'TP ms':>8}"
    )
    for name, (make, side) in MODELS.items():
        model = make().eval()
        x = torch.zeros(1, 3, side, side)
        graph = analyze(model, x)
        weights = [w for g in graph.prunable for w in filter_rows(model, g)]
        plan = make_plan(model, graph, 0.5)
        _, tensors, r, c, _ = plan_cuts(model, graph, plan)
        tp_times = torch_pruning_rows(model, x, args.repeats)
        cases = {
            "l1": lambda flag: ops.filter_norms(weights, 1, flag),
            "l2": lambda flag: ops.filter_norms(weights, 2, flag),
            "fpgm": lambda flag: ops.fpgm(weights, flag),
            "removal": lambda flag: ops.gather_channels(tensors, r, c, flag),
        }
        for op, fn in cases.items():
            nat = median_time(lambda: fn(True), args.repeats)
            ref = median_time(lambda: fn(False), args.repeats)
            row = {"model": name, "op": op, "native_s": nat, "reference_s": ref}
            if op in tp_times:
                row["torch_pruning_s"] = tp_times[op]
            rows.append(row)
            tp = f"{tp_times[op] * 1e3:8.2f}" if op in tp_times else f"{'-':>8}"
            print(
                f"{name:<14} {op:<10} {nat * 1e3:10.2f} {ref * 1e3:13.2f} {ref / nat:6.2f}x {tp}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
