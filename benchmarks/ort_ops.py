"""Where does a pruned model's time go? ONNX Runtime's profiler, per operator type, for the
original and a uniformly pruned copy (widths in multiples of --round-to) at --target of the
MACs: time per op type, its share, and the pruned/original ratio next to the MAC ratio.

    python benchmarks/ort_ops.py [--model resnet56] [--target 0.4] [--batch 32] [--json F]

Untrained weights: operator times do not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from qmixprune import analyze, count, export_onnx
from qmixprune.budget import Budget, CostModel, uniform_counts
from qmixprune.models import create
from qmixprune.pruning import apply_plan, plan_for_counts


def op_times(path: Path, batch: int, runs: int, threads: int) -> tuple[dict, float]:
    """Microseconds per run by operator type (kernel time), and the mean whole-run time."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    for _ in range(runs):
        sess.run(None, {"input": x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    total = []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / runs
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            total.append(e["dur"])
    return dict(per_op), float(np.mean(total[runs // 5 :]))  # the first fifth as warm-up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--target", type=float, default=0.4)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(0)
    x = torch.zeros(1, 3, 32, 32)
    model = create(args.model, num_classes=10).eval()
    graph = analyze(model, x)
    cost = CostModel(model, graph, x)
    counts = uniform_counts(
        Budget(cost, args.target), [g.name for g in graph.prunable], round_to=args.round_to
    )
    pruned = apply_plan(model, graph, plan_for_counts(graph, counts)).eval()
    macs = count(pruned, x)[0] / count(model, x)[0]
    with tempfile.TemporaryDirectory() as d:
        a = export_onnx(model, Path(d) / "original.onnx", x).path
        b = export_onnx(pruned, Path(d) / "pruned.onnx", x).path
        (ops_a, run_a), (ops_b, run_b) = (
            op_times(f, args.batch, args.runs, args.threads) for f in (a, b)
        )
    sum_a, sum_b = sum(ops_a.values()), sum(ops_b.values())
    print(
        f"{args.model} at {macs:.3f} of the MACs (multiples of {args.round_to}), batch "
        f"{args.batch}, {args.threads} threads: run {run_a / 1e3:.2f} -> {run_b / 1e3:.2f} ms "
        f"({run_a / run_b:.2f}x; ideal {1 / macs:.2f}x); kernels {sum_a / 1e3:.2f} -> "
        f"{sum_b / 1e3:.2f} ms"
    )
    print(f"{'op':<22} {'orig ms':>8} {'share':>6} {'pruned ms':>9} {'share':>6} {'speed-up':>8}")
    rows = []
    for op in sorted(ops_a, key=lambda o: -ops_a[o]):
        ta, tb = ops_a[op], ops_b.get(op, 0.0)
        rows.append({"op": op, "original_us": ta, "pruned_us": tb})
        print(
            f"{op:<22} {ta / 1e3:>8.3f} {ta / sum_a:>6.1%} {tb / 1e3:>9.3f} {tb / sum_b:>6.1%} "
            f"{ta / tb if tb else float('inf'):>7.2f}x"
        )
    if args.json:
        doc = {"args": vars(args), "macs": macs, "run_us": [run_a, run_b], "ops": rows}
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
