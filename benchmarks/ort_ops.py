"""Where does a pruned model's time go? ONNX Runtime's profiler, per operator type, for the
original and a uniformly pruned copy (widths in multiples of --round-to) at --target of the
MACs: time per op type, and the whole-run speed-up next to the ideal (1 / MACs kept). With
--int8, the original model in fp32 and INT8 instead: activations quantized for ONNX Runtime
(uint8) and for TensorRT (symmetric int8), both run here by ONNX Runtime's CPU kernels.

    python benchmarks/ort_ops.py [--model resnet56] [--target 0.4] [--batch 32]
                                 [--input-size 32] [--int8] [--json F]

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
from qmixprune.deploy.quantize import RUNTIMES, quantize
from qmixprune.models import create
from qmixprune.pruning import apply_plan, plan_for_counts

WEIGHT_INPUT = {"Conv": 1, "QLinearConv": 3}  # which input of the node is the weight


def kind(args: dict) -> str:
    """The op type; convolutions split by kernel (depthwise, 1x1, kxk) from the weight's
    shape, which the profiler records with every node."""
    op = args["op_name"]
    shapes = args.get("input_type_shape", [])
    i = WEIGHT_INPUT.get(op)
    if i is None or len(shapes) <= i:
        return op
    w = next(iter(shapes[i].values()))
    if len(w) != 4:
        return op
    if w[1] == 1 and w[2] * w[3] > 1:
        return f"{op} depthwise {w[2]}x{w[3]}"
    return f"{op} {w[2]}x{w[3]}"


def op_times(path: Path, batch: int, runs: int, threads: int, size: int = 32) -> tuple[dict, float]:
    """Microseconds per run by operator type (kernel time), and the mean whole-run time."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    for _ in range(runs):
        sess.run(None, {"input": x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    total = []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[kind(e["args"])] += e["dur"] / runs
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            total.append(e["dur"])
    return dict(per_op), float(np.mean(total[runs // 5 :]))  # the first fifth as warm-up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--target", type=float, default=0.4)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--input-size", type=int, default=32, help="pixels (224: ImageNet models)")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--int8",
        action="store_true",
        help="the original in fp32 and INT8 (activations for onnxruntime and for tensorrt)",
    )
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(0)
    x = torch.zeros(1, 3, args.input_size, args.input_size)
    model = create(args.model, num_classes=10).eval()
    with tempfile.TemporaryDirectory() as d:
        a = export_onnx(model, Path(d) / "original.onnx", x).path
        if args.int8:
            variants, macs = {"fp32": a}, 1.0
            rng = np.random.default_rng(0)  # timing only: ranges from random inputs will do
            shape = (32, *x.shape[1:])
            calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
            for runtime in RUNTIMES:
                path = Path(d) / f"int8-{runtime}.onnx"
                quantize(a, path, calib, "onnxruntime", runtime)
                variants[f"int8 {runtime}"] = path
        else:
            graph = analyze(model, x)
            cost = CostModel(model, graph, x)
            names = [g.name for g in graph.prunable]
            counts = uniform_counts(Budget(cost, args.target), names, round_to=args.round_to)
            pruned = apply_plan(model, graph, plan_for_counts(graph, counts)).eval()
            macs = count(pruned, x)[0] / count(model, x)[0]
            variants = {"original": a, "pruned": export_onnx(pruned, Path(d) / "p.onnx", x).path}
        times = {
            k: op_times(Path(f), args.batch, args.runs, args.threads, args.input_size)
            for k, f in variants.items()
        }
    labels = list(times)
    base_run = times[labels[0]][1]
    what = f", {macs:.3f} of the MACs (multiples of {args.round_to})" if not args.int8 else ""
    print(
        f"{args.model} at {args.input_size} px{what}, batch {args.batch}, {args.threads} "
        "threads; whole run:"
    )
    for k, (ops, run) in times.items():
        ideal = f" (ideal {1 / macs:.2f}x)" if k == "pruned" else ""
        print(
            f"  {k:<18} {run / 1e3:8.2f} ms  {base_run / run:5.2f}x{ideal}  kernels "
            f"{sum(ops.values()) / 1e3:.2f} ms"
        )
    every = sorted(
        {o for ops, _ in times.values() for o in ops},
        key=lambda o: -max(ops.get(o, 0.0) for ops, _ in times.values()),
    )
    print(f"{'op (ms per run)':<26}" + "".join(f"{k:>18}" for k in labels))
    rows = []
    for op in every:
        us = {k: times[k][0].get(op, 0.0) for k in labels}
        rows.append({"op": op, **{f"{k}_us": v for k, v in us.items()}})
        print(f"{op:<26}" + "".join(f"{v / 1e3:>18.3f}" for v in us.values()))
    if args.json:
        runs = {k: run for k, (_, run) in times.items()}
        doc = {"args": vars(args), "macs": macs, "run_us": runs, "ops": rows}
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
