"""``export``, ``bench`` and ``profile``: a model for its device, and its latency there.

``bench`` imports neither torch nor this package's torch parts (it runs on edge devices).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from .options import DATASETS, data_args, device_arg, formatter_for, model_args


def add_arguments(command: str, sp: argparse.ArgumentParser) -> None:
    sp.formatter_class = formatter_for()
    if command == "bench":
        from ..deploy.bench import add_arguments as bench_arguments

        return bench_arguments(sp)
    model_args(sp)
    if command == "profile":
        return _profile_arguments(sp)
    sp.add_argument(
        "-o", "--output", required=True, help="the .onnx file to write (the INT8 one with --int8)"
    )
    sp.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    sp.add_argument(
        "--fixed-batch",
        type=int,
        metavar="N",
        help="export for batch N only (default: a free batch axis, what bench and TensorRT need)",
    )
    sp.add_argument("--dynamic-batch", action="store_true", help=argparse.SUPPRESS)  # the default
    sp.add_argument("--fp16", action="store_true", help="float16 weights and I/O")
    sp.add_argument("--simplify", action="store_true", help="simplify the graph (onnxslim)")
    sp.add_argument(
        "--int8",
        action="store_true",
        help="write an INT8 Q/DQ model (static quantization calibrated on --data's training "
        "set, checked against the fp32 model and on its test set)",
    )
    sp.add_argument(
        "--calib-batches", type=int, default=8, help="INT8 calibration batches of 32 (default 8)"
    )
    sp.add_argument(
        "--quantizer",
        default="auto",
        choices=["auto", "onnxruntime", "modelopt"],
        help="INT8 quantizer (default auto: NVIDIA ModelOpt for --tensorrt int8 when "
        "installed, else onnxruntime)",
    )
    sp.add_argument(
        "--tensorrt",
        choices=["fp32", "fp16", "int8"],
        help="also build a TensorRT engine (needs tensorrt and a GPU; int8 implies --int8 and "
        "quantizes activations as TensorRT reads them: symmetric int8, which ONNX Runtime's "
        "CPU runs slower than the default uint8)",
    )
    sp.add_argument(
        "--trt-batch",
        default="1,8,32",
        metavar="MIN,OPT,MAX",
        help="the engine's batch profile (default 1,8,32)",
    )
    data_args(sp)  # --int8: calibration on its training set, the check on its test set
    sp.add_argument("--calib-data", dest="data", choices=DATASETS, help=argparse.SUPPRESS)


def _profile_arguments(pf: argparse.ArgumentParser) -> None:
    pf.add_argument(
        "--provider",
        default="cpu",
        choices=["cpu", "cuda", "tensorrt"],
        help="ONNX Runtime's CPU or CUDA provider, or TensorRT engines per layer (trtexec or "
        "TensorRT's runtime; for a Jetson)",
    )
    pf.add_argument(
        "--precision",
        default="fp16",
        choices=["fp32", "fp16"],
        help="engine precision with --provider tensorrt (default fp16)",
    )
    pf.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: ONNX Runtime's)"
    )
    pf.add_argument("--batch", type=int, default=1, help="batch size to time (as deployed)")
    pf.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="profile multiples of this (default: measure which multiple the device rewards)",
    )
    pf.add_argument("--runs", type=int, default=20, help="timed runs per measurement")
    pf.add_argument("-o", "--output", required=True, help="the JSON table to write")
    device_arg(pf)


def run(args: argparse.Namespace) -> int:
    if args.command == "bench":
        from ..deploy.bench import run as bench

        return bench(args)
    from ..files import check_writable_file

    check_writable_file(args.output)
    return {"export": export, "profile": profile}[args.command](args)


def profile(args: argparse.Namespace) -> int:
    from ..budget import CostModel
    from ..deploy.profile import engine_timer, format_table, profile, save_table
    from ..device import resolve
    from ..graph import analyze
    from .model import load_model

    device = resolve(args.device)
    # TensorRT: every layer and whole model timed as its own engine (checked before loading)
    timer = engine_timer(args.precision, args.runs) if args.provider == "tensorrt" else None
    model, x = load_model(args)
    model, x = model.to(device), x.to(device)  # the torch side (tracing, pruned copies, export)
    cost = CostModel(model, analyze(model, x), x)
    print(f"profiling {len(cost.layers)} layers on {args.provider} ...")
    table = profile(
        model,
        cost,
        x,
        args.provider,
        args.threads,
        args.batch,
        args.round_to,
        args.runs,
        progress=lambda msg: print(f"  {msg}", flush=True),
        timer=timer,
    )
    save_table(table, args.output)
    print(format_table(table))
    print(
        f"whole model {table['total_ms']:.3f} ms at batch {args.batch}; channel multiple "
        f"{table['round_to']}; wrote {args.output}"
    )
    return 0


def export(args: argparse.Namespace) -> int:
    from ..deploy import tensorrt
    from ..deploy.export import export_onnx
    from .model import load_model

    if args.tensorrt and not tensorrt.available():
        raise UserError(tensorrt.INSTALL_HINT)
    int8 = args.int8 or args.tensorrt == "int8"  # TensorRT INT8 reads the Q/DQ model
    if int8 and args.fp16:
        raise UserError("--int8 and --fp16 exclude each other: pick one precision")
    if args.calib_batches < 1 or (args.fixed_batch is not None and args.fixed_batch < 1):
        raise UserError("--calib-batches and --fixed-batch must be >= 1")
    if args.tensorrt and args.fixed_batch:
        raise UserError("TensorRT engines need a free batch axis: drop --fixed-batch")
    batch_profile = tensorrt.BatchProfile.parse(args.trt_batch) if args.tensorrt else None
    model, x = load_model(args)
    if args.fixed_batch:
        x = x.repeat(args.fixed_batch, *[1] * (x.dim() - 1))
    dynamic = not args.fixed_batch
    if not int8:
        res = export_onnx(
            model, args.output, x, args.opset, dynamic, args.fp16, simplify=args.simplify
        )
        print(
            f"wrote {res.path} (opset {res.opset}; ONNX Runtime vs PyTorch max |diff| "
            f"{res.max_abs_diff:.2e})"
        )
    else:
        import tempfile

        from ..deploy.quantize import quantize_checked
        from .run import load_data

        data = load_data(args, seed=0, model=model)
        with tempfile.TemporaryDirectory() as d:
            fp32 = export_onnx(
                model, Path(d) / "fp32.onnx", x, args.opset, dynamic, simplify=args.simplify
            )
            res = quantize_checked(
                fp32.path,
                args.output,
                (data.train[i] for i in range(len(data.train))),
                (data.test[i] for i in range(len(data.test))),
                args.calib_batches,
                quantizer=args.quantizer,
                runtime="tensorrt" if args.tensorrt == "int8" else "onnxruntime",
            )
        print(res.summary())
    if args.tensorrt:
        engine = tensorrt.build_engine(
            res.path, Path(res.path).with_suffix(".engine"), args.tensorrt, batch_profile
        )
        print(f"wrote {engine} (TensorRT {args.tensorrt})")
    return 0
