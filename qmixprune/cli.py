"""The ``qmixprune`` command. ``main(argv)`` returns an exit code, so tests call it directly.

Exit codes: 0 success, 1 unexpected failure, 2 bad input (usage or a UserError),
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import replace

from . import __version__
from .errors import UserError

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qmixprune",
        description="Structured filter pruning searched by multi-agent RL (QMIX), for deployment.",
    )
    p.add_argument("--version", action="version", version=f"qmixprune {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "model",
            help="model file (ours, a state dict with --arch, TorchScript) or a built-in name "
            "(vgg16, alexnet, resnet56, torchvision:NAME)",
        )
        sp.add_argument("--arch", help="architecture of a state-dict file")
        sp.add_argument("--num-classes", type=int, default=None)
        sp.add_argument("--width", type=float, default=1.0)
        sp.add_argument("--input-size", type=int, default=32, help="square input side (pixels)")
        sp.add_argument(
            "--trust-pickle",
            action="store_true",
            help="allow loading a pickled nn.Module (runs code from the file)",
        )

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data", default="digits", choices=DATASETS)
        sp.add_argument("--data-dir", help="where the data set lies (or is downloaded to)")
        sp.add_argument("--download", action="store_true", help="fetch CIFAR if missing")

    def search_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="YAML or JSON file with any of the options")
        sp.add_argument("--target-flops", type=float, help="fraction of the MACs to keep")
        sp.add_argument(
            "--target-latency",
            type=float,
            help="fraction of the measured latency to keep (needs --latency-table)",
        )
        sp.add_argument("--latency-table", help="table from `qmixprune profile`")
        sp.add_argument("--episodes", type=int)
        sp.add_argument(
            "--envs",
            type=int,
            help="episodes per iteration, scored as one batch (shared across ranks under torchrun)",
        )
        sp.add_argument("--max-evaluations", type=int, help="stop after this many plans scored")
        sp.add_argument("--steps", type=int, help="pruning steps per episode")
        sp.add_argument(
            "--round-to",
            type=int,
            help="kept channels a multiple of this (default 1; with --target-latency, the table's)",
        )
        sp.add_argument("--min-channels", type=int, help="no group keeps fewer")
        sp.add_argument("--seed", type=int)
        sp.add_argument("--resume", action="store_true", help="continue an interrupted run")
        sp.add_argument("--overwrite", action="store_true", help="replace an existing output")
        sp.add_argument("--quiet", action="store_true", help="no progress display")

    a = sub.add_parser("analyze", help="show the channel groups of a model")
    model_args(a)
    c = sub.add_parser("count", help="MACs and parameters, per layer")
    model_args(c)
    pr = sub.add_parser("prune", help="prune every group uniformly (no search)")
    model_args(pr)
    goal = pr.add_mutually_exclusive_group(required=True)
    goal.add_argument("--ratio", type=float, help="fraction of each group's channels removed")
    goal.add_argument("--target-flops", type=float, help="fraction of the MACs to keep")
    pr.add_argument(
        "--importance", default="l1", choices=["l1", "l2", "fpgm", "bn_scale", "random"]
    )
    pr.add_argument("--round-to", type=int, default=8)
    pr.add_argument("--min-channels", type=int, default=1)
    pr.add_argument("-o", "--output", required=True, help="where to write the pruned model")
    s = sub.add_parser("search", help="QMIX search for per-group channel counts")
    model_args(s)
    data_args(s)
    search_args(s)
    s.add_argument("-o", "--output", required=True, help="output folder")
    cp = sub.add_parser("compress", help="search, prune, distil, export and report")
    model_args(cp)
    data_args(cp)
    search_args(cp)
    cp.add_argument("--epochs", type=int, help="distillation epochs")
    cp.add_argument("--no-export", action="store_true", help="skip ONNX export and latency")
    cp.add_argument("-o", "--output", required=True, help="output folder")
    ex = sub.add_parser("export", help="export a model to ONNX (checked against PyTorch)")
    model_args(ex)
    ex.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    ex.add_argument("--opset", type=int, default=17)
    ex.add_argument("--dynamic-batch", action="store_true", help="a free batch dimension")
    ex.add_argument("--fp16", action="store_true", help="float16 weights and I/O")
    ex.add_argument("--simplify", action="store_true", help="simplify the graph (onnxslim)")
    ex.add_argument(
        "--tensorrt",
        choices=["fp32", "fp16", "int8"],
        help="also build a TensorRT engine (needs tensorrt and a GPU)",
    )
    ex.add_argument(
        "--calib-data",
        default="digits",
        choices=DATASETS,
        help="data set drawn for INT8 calibration",
    )
    ex.add_argument("--data-dir")
    from .bench import add_arguments as bench_arguments

    bench_arguments(sub.add_parser("bench", help="ONNX Runtime latency of ONNX models"))
    pf = sub.add_parser("profile", help="measure per-layer latency on this device")
    model_args(pf)
    pf.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    pf.add_argument("--threads", type=int, default=None)
    pf.add_argument("--batch", type=int, default=1)
    pf.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="profile multiples of this (default: measure which multiple the device rewards)",
    )
    pf.add_argument("--runs", type=int, default=20)
    pf.add_argument("-o", "--output", required=True, help="the JSON table to write")
    d = sub.add_parser("demo", help="train VGG-16 on the bundled digits, then compress it")
    d.add_argument("-o", "--output", default="qmixprune-demo")
    d.add_argument("--quick", action="store_true", help="fewer epochs and evaluations")
    d.add_argument("--target-flops", type=float, default=0.4)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command is None:
        parser().print_help()
        return EXIT_USAGE
    try:
        return _COMMANDS[args.command](args)
    except UserError as exc:
        print(f"qmixprune: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("qmixprune: interrupted; nothing half-written was kept", file=sys.stderr)
        return EXIT_INTERRUPTED


def _load(args):
    import torch

    from . import models, serialize
    from .errors import UserError

    path = args.model
    if path in models.list_models() or path.startswith("torchvision:"):
        model = models.create(path, num_classes=args.num_classes or 10, width=args.width)
    else:
        model = serialize.load_model_file(
            path, args.arch, args.num_classes, args.width, args.trust_pickle
        )
    shape = getattr(model, "qmixprune_input_shape", None) or [3, args.input_size, args.input_size]
    if isinstance(model, torch.jit.ScriptModule) and args.command not in ("count", "export"):
        raise UserError(f"{path} is TorchScript: it can be counted and exported, not pruned")
    return model.eval(), torch.zeros(1, *shape)


def _analyze(args) -> int:
    from .graph import analyze

    model, x = _load(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = analyze(model, x)
    print(graph.describe())
    for w in caught:
        print(f"warning: {w.message}")
    print(f"{len(graph.prunable)} of {len(graph.groups)} groups prunable")
    return EXIT_OK


def _count(args) -> int:
    from .flops import format_table, layer_table

    model, x = _load(args)
    print(format_table(layer_table(model, x)))
    print(f"params {sum(p.numel() for p in model.parameters()):,}")
    return EXIT_OK


def _prune(args) -> int:
    from . import serialize
    from .budget import Budget, CostModel, uniform_counts
    from .errors import UserError
    from .flops import count
    from .graph import analyze
    from .importance import ranks
    from .pruning import apply_plan, make_plan, plan_for_counts

    model, x = _load(args)
    graph = analyze(model, x)
    if args.ratio is not None:
        plan = make_plan(
            model, graph, args.ratio, args.importance, args.round_to, args.min_channels
        )
    else:
        if not 0 < args.target_flops < 1:
            raise UserError(f"--target-flops must be in (0, 1), got {args.target_flops}")
        names = [g.name for g in graph.prunable]
        counts = uniform_counts(
            Budget(CostModel(model, graph, x), args.target_flops),
            names,
            args.round_to,
            args.min_channels,
        )
        plan = plan_for_counts(graph, counts, ranks(model, graph.prunable, args.importance))
    pruned = apply_plan(model, graph, plan)
    (m0, p0), (m1, p1) = count(model, x), count(pruned, x)
    serialize.save(pruned, args.output)
    print(f"MACs {m0:,} -> {m1:,} ({m1 / m0:.3f}); params {p0:,} -> {p1:,} ({p1 / p0:.3f})")
    print(f"wrote {args.output}")
    return EXIT_OK


def search_config(args):
    """The search's config: defaults <- --config file <- flags given on the command line."""
    from .config import build, merge, read_config
    from .search import SearchConfig

    flags = {
        "episodes": args.episodes,
        "envs": args.envs,
        "max_evaluations": args.max_evaluations,
        "seed": args.seed,
        "env": {
            "target_flops": args.target_flops,
            "target_latency": args.target_latency,
            "steps": args.steps,
            "round_to": args.round_to,
            "min_channels": args.min_channels,
        },
    }
    return build(SearchConfig, merge(read_config(args.config), flags))


def _search(args) -> int:
    from .data import load_data
    from .pipeline import run_search

    cfg = search_config(args)
    if args.target_latency is not None and args.target_flops is None:
        cfg = replace(cfg, env=replace(cfg.env, target_flops=None))  # latency alone
    cfg.env.validate()
    table = _latency_table(args)
    out = _prepare_out(args)
    model, _ = _load(args)
    data = load_data(args.data, args.data_dir, args.download, seed=cfg.seed)
    result, _ = run_search(model, data, cfg, out, args.resume, args.quiet, table)
    if not args.quiet:
        print(
            f"best val reward {result.reward:.4f} at {result.macs_ratio:.4f} of the MACs after "
            f"{result.evaluations} evaluations ({result.seconds:.0f} s); wrote {out}/"
        )
    return EXIT_OK


def compress_config(args):
    """compress's config: defaults <- --config file <- flags given on the command line."""
    from .config import build, merge, read_config
    from .pipeline import CompressConfig

    flags = {
        "target_flops": args.target_flops,
        "seed": args.seed,
        "export": False if args.no_export else None,
        "search": {
            "episodes": args.episodes,
            "envs": args.envs,
            "max_evaluations": args.max_evaluations,
            "env": {
                "steps": args.steps,
                "round_to": args.round_to,
                "min_channels": args.min_channels,
            },
        },
        "distill": {"epochs": args.epochs},
    }
    return build(CompressConfig, merge(read_config(args.config), flags))


def _compress(args) -> int:
    from .data import load_data
    from .pipeline import compress

    cfg = compress_config(args)
    if args.target_latency is not None and args.target_flops is None:
        cfg = replace(cfg, target_flops=None)  # latency alone, unless both were given
    cfg = replace(cfg, target_latency=args.target_latency or cfg.target_latency)
    cfg.resolved().search.env.validate()
    table = _latency_table(args)
    out = _prepare_out(args)
    model, _ = _load(args)
    data = load_data(args.data, args.data_dir, args.download, seed=cfg.seed)
    compress(
        model, data, config=cfg, out=out, resume=args.resume, quiet=args.quiet, latency_table=table
    )
    return EXIT_OK


def _prepare_out(args):
    """The output folder, checked and made by rank 0 only when run under torchrun."""
    from pathlib import Path

    from .distributed import barrier, init, is_main
    from .report import prepare_out

    init()
    out = prepare_out(args.output, args.overwrite, args.resume) if is_main() else None
    barrier()
    return out or Path(args.output)


def _latency_table(args) -> dict | None:
    from .latency import load_table

    if args.latency_table is None:
        if args.target_latency is not None:
            raise UserError("--target-latency needs --latency-table (from `qmixprune profile`)")
        return None
    return load_table(args.latency_table)


def _profile(args) -> int:
    from .budget import CostModel
    from .graph import analyze
    from .latency import profile, save_table

    model, x = _load(args)
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
        progress=lambda name: print(f"  {name}"),
    )
    save_table(table, args.output)
    print(
        f"whole model {table['total_ms']:.3f} ms at batch {args.batch}; channel multiple "
        f"{table['round_to']}; wrote {args.output}"
    )
    return EXIT_OK


def _export(args) -> int:
    from . import trt_engine
    from .export import export_onnx

    if args.tensorrt and not trt_engine.available():
        raise UserError(trt_engine.INSTALL_HINT)
    model, x = _load(args)
    res = export_onnx(
        model, args.output, x, args.opset, args.dynamic_batch, args.fp16, simplify=args.simplify
    )
    print(
        f"wrote {res.path} (opset {res.opset}; ONNX Runtime vs PyTorch max |diff| "
        f"{res.max_abs_diff:.2e})"
    )
    if args.tensorrt:
        calib = None
        if args.tensorrt == "int8":
            from .data import load_data

            train = load_data(args.calib_data, args.data_dir).train
            calib = trt_engine.calibration_batches(train, batch=8)
        engine = res.path.with_suffix(".engine")
        trt_engine.build_engine(res.path, engine, args.tensorrt, calib)
        print(f"wrote {engine} (TensorRT {args.tensorrt})")
    return EXIT_OK


def _bench(args) -> int:
    from .bench import run

    return run(args)


def _demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


_COMMANDS = {
    "analyze": _analyze,
    "count": _count,
    "prune": _prune,
    "search": _search,
    "compress": _compress,
    "export": _export,
    "bench": _bench,
    "profile": _profile,
    "demo": _demo,
}


if __name__ == "__main__":
    sys.exit(main())
