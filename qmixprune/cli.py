"""The ``qmixprune`` command. ``main(argv)`` returns an exit code, so tests call it directly.

Exit codes: 0 success, 1 unexpected failure, 2 bad input (usage or a UserError),
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from dataclasses import replace

from . import __version__
from .errors import UserError

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# flags of compress/search whose default lives in the config dataclasses (None = "not
# given", so that a --config file or --preset applies): --help shows that default
_CONFIG_KEYS = {
    "target_flops": "target_flops",
    "seed": "seed",
    "episodes": "search.episodes",
    "envs": "search.envs",
    "max_evaluations": "search.max_evaluations",
    "patience": "search.patience",
    "steps": "search.env.steps",
    "min_channels": "search.env.min_channels",
    "epochs": "distill.epochs",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` gives every option's default: argparse's own, or for compress/search
    flags the config dataclasses' (what applies when neither --config nor --preset sets it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.help is argparse.SUPPRESS or "default" in text or not action.option_strings:
            return text
        key = _CONFIG_KEYS.get(action.dest)
        if action.default is None and key and self._prog.split()[-1] in ("compress", "search"):
            value = _config_default(key)
            value = "none" if value is None else str(value).replace("%", "%%")
            return f"{text} (default: {value} unless --config or --preset sets it)"
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


def _config_default(key: str):
    from .run.compress import CompressConfig

    value = CompressConfig()
    for part in key.split("."):
        value = getattr(value, part)
    return value


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
            "(vgg16, alexnet, resnet56, torchvision:NAME, timm:NAME)",
        )
        sp.add_argument("--arch", help="architecture of a state-dict file")
        sp.add_argument(
            "--num-classes",
            type=int,
            default=None,
            help="classifier outputs of a built-in or --arch model (default: 10)",
        )
        sp.add_argument(
            "--width", type=float, default=1.0, help="channel multiplier of the built-in models"
        )
        sp.add_argument(
            "--input-size",
            type=int,
            default=None,
            help="square input side in pixels, as the model was trained (default: the size the "
            "model file records, else 224 for torchvision:/timm: models, else 32); imagefolder "
            "images are resized to it",
        )
        sp.add_argument(
            "--trust-pickle",
            action="store_true",
            help="allow loading a pickled nn.Module or a TorchScript archive (both run code "
            "from the file)",
        )
        sp.add_argument(
            "--model-factory",
            metavar="PKG.MODULE:FUNCTION",
            help="your own model class: a function returning the unpruned model, whose "
            "state dict or pruned qmixprune file MODEL holds (imports and runs that code)",
        )

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--data",
            default="digits",
            choices=DATASETS,
            help="data set (digits: embedded, 32x32; cifar10/100; imagefolder: one sub-folder "
            "per class, train/ + test/ or one tree split 80/20)",
        )
        sp.add_argument("--data-dir", help="where the data set lies (or is downloaded to)")
        sp.add_argument("--download", action="store_true", help="fetch CIFAR if missing")
        sp.add_argument(
            "--mean",
            help="per-channel mean the model was trained with: 3 (or 1) comma-separated numbers "
            "or a preset: imagenet, cifar10, cifar100, half, none (default: the data set's own; "
            "ImageNet's for imagefolder)",
        )
        sp.add_argument(
            "--std",
            help="per-channel std, as --mean (a preset name in --mean sets both)",
        )

    def search_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="YAML or JSON file with any of the options")
        sp.add_argument("--target-flops", type=float, help="fraction of the MACs to keep")
        sp.add_argument(
            "--target-latency",
            type=float,
            help="fraction of the measured latency to keep (needs --latency-table)",
        )
        sp.add_argument("--latency-table", help="table from `qmixprune profile`")
        sp.add_argument("--episodes", type=int, help="search episodes at most")
        sp.add_argument(
            "--envs",
            type=int,
            help="episodes per iteration, scored as one batch (shared across ranks under torchrun)",
        )
        sp.add_argument("--max-evaluations", type=int, help="stop after this many plans scored")
        sp.add_argument(
            "--patience",
            type=int,
            help="stop when the best reward has not improved for this many evaluations (0: never)",
        )
        sp.add_argument("--steps", type=int, help="pruning steps per episode")
        sp.add_argument(
            "--round-to",
            type=int,
            help="kept channels a multiple of this (default: 8 for a FLOPs target, the profiled "
            "multiple with --target-latency; 1 keeps exact FLOPs but unaligned widths run slow)",
        )
        sp.add_argument("--min-channels", type=int, help="no group keeps fewer")
        sp.add_argument("--seed", type=int, help="makes the run repeatable on one machine")
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
        "--importance",
        default="l1",
        choices=["l1", "l2", "fpgm", "bn_scale", "random"],
        help="filter ranking: the least important filters go",
    )
    pr.add_argument("--round-to", type=int, default=8, help="kept channels a multiple of this")
    pr.add_argument("--min-channels", type=int, default=1, help="no group keeps fewer")
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
    cp.add_argument(
        "--preset",
        choices=["quick", "default", "thorough"],
        help="run size (episodes / patience / epochs; README: Presets); --config and flags "
        "override it (default: default)",
    )
    cp.add_argument("--epochs", type=int, help="distillation epochs")
    cp.add_argument(
        "--allow-untrained",
        action="store_true",
        help="go on when the model's test accuracy is at chance level (refused otherwise)",
    )
    cp.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the search and distillation checkpoints in OUT after success (they are "
        "only needed to --resume an interrupted run)",
    )
    cp.add_argument("--no-export", action="store_true", help="skip ONNX export and latency")
    cp.add_argument(
        "--int8",
        action="store_true",
        help="also model.int8.onnx (INT8 Q/DQ calibrated on the training set), timed and "
        "checked on the test set",
    )
    cp.add_argument("-o", "--output", required=True, help="output folder")
    ex = sub.add_parser("export", help="export a model to ONNX (checked against PyTorch)")
    model_args(ex)
    ex.add_argument(
        "-o", "--output", required=True, help="the .onnx file to write (the INT8 one with --int8)"
    )
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    ex.add_argument(
        "--fixed-batch",
        type=int,
        metavar="N",
        help="export for batch N only (default: a free batch axis, what bench and TensorRT need)",
    )
    ex.add_argument("--dynamic-batch", action="store_true", help=argparse.SUPPRESS)  # the default
    ex.add_argument("--fp16", action="store_true", help="float16 weights and I/O")
    ex.add_argument("--simplify", action="store_true", help="simplify the graph (onnxslim)")
    ex.add_argument(
        "--int8",
        action="store_true",
        help="write an INT8 Q/DQ model (static quantization calibrated on --data's training "
        "set, checked against the fp32 model and on its test set)",
    )
    ex.add_argument(
        "--calib-batches", type=int, default=8, help="INT8 calibration batches of 32 (default 8)"
    )
    ex.add_argument(
        "--quantizer",
        default="auto",
        choices=["auto", "onnxruntime", "modelopt"],
        help="INT8 quantizer (default auto: NVIDIA ModelOpt for --tensorrt int8 when "
        "installed, else onnxruntime)",
    )
    ex.add_argument(
        "--tensorrt",
        choices=["fp32", "fp16", "int8"],
        help="also build a TensorRT engine (needs tensorrt and a GPU; int8 implies --int8 and "
        "quantizes activations as TensorRT reads them: symmetric int8, which ONNX Runtime's "
        "CPU runs slower than the default uint8)",
    )
    ex.add_argument(
        "--trt-batch",
        default="1,8,32",
        metavar="MIN,OPT,MAX",
        help="the engine's batch profile (default 1,8,32)",
    )
    data_args(ex)  # --int8: calibration on its training set, the check on its test set
    ex.add_argument("--calib-data", dest="data", choices=DATASETS, help=argparse.SUPPRESS)
    from .deploy.bench import add_arguments as bench_arguments

    bench_arguments(sub.add_parser("bench", help="ONNX Runtime latency of ONNX models"))
    pf = sub.add_parser("profile", help="measure per-layer latency on this device")
    model_args(pf)
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
    d = sub.add_parser("demo", help="train VGG-16 on the bundled digits, then compress it")
    d.add_argument("-o", "--output", default="qmixprune-demo", help="output folder")
    d.add_argument("--quick", action="store_true", help="fewer epochs and evaluations")
    d.add_argument("--target-flops", type=float, default=0.4, help="fraction of the MACs to keep")
    d.add_argument("--seed", type=int, default=0, help="makes the run repeatable")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output")
    d.add_argument("--quiet", action="store_true", help="no progress display")
    for name in ("prune", "search", "compress", "profile", "demo"):
        sub.choices[name].add_argument(
            "--device",
            metavar="auto|cpu|cuda|cuda:N",
            help="where torch runs (default auto: the local GPU when one is visible, under "
            "torchrun cuda:$LOCAL_RANK, else the CPU)",
        )
    for name in ("compress", "demo"):
        sub.choices[name].add_argument(
            "--no-amp",
            action="store_true",
            help="full-precision fine-tuning on CUDA (default: bf16 autocast, or fp16 with a "
            "GradScaler on GPUs without bf16; the CPU always runs fp32)",
        )
    for name in ("analyze", "prune"):
        sub.choices[name].add_argument(
            "--parts",
            metavar="A,B",
            help="submodules to analyse when the model cannot be traced whole (detectors; "
            "default: the largest ones that trace)",
        )
    for sp in sub.choices.values():
        sp.formatter_class = HelpFormatter
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command is None:
        parser().print_help()
        return EXIT_USAGE
    try:
        _check_output_file(args)
        return _COMMANDS[args.command](args)
    except UserError as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0's line, alone
            print(f"qmixprune: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        # a path the checks before the work could not foresee (changed while running)
        print(f"qmixprune: error: cannot use {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if args.command in ("compress", "search"):
            msg = (
                f"interrupted; checkpoints kept in {args.output}: rerun the same command with "
                "--resume to go on (nothing half-written was kept)"
            )
        else:
            msg = "interrupted; nothing half-written was kept"
        print(f"qmixprune: {msg}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _check_output_file(args) -> None:
    """A file output that cannot be written (a folder, a read-only place) is refused before
    any work; output folders are checked by outdir.check."""
    from .files import check_writable_file

    if args.command in ("prune", "export", "profile"):  # bench checks its --json itself
        check_writable_file(args.output)


def _load(args):
    import torch

    from . import models, serialize
    from .errors import UserError

    path = args.model
    if path in models.list_models() or path.startswith(("torchvision:", "timm:")):
        if getattr(args, "model_factory", None):
            raise UserError(
                f"--model-factory reads a MODEL file (a state dict or our .safetensors), "
                f"not the built-in name {path!r}"
            )
        model = models.create(path, num_classes=args.num_classes or 10, width=args.width)
    else:
        factory = serialize.model_factory(args.model_factory) if args.model_factory else None
        model = serialize.load_model_file(
            path, args.arch, args.num_classes, args.width, args.trust_pickle, factory
        )
    from .inputs import check_forward, default_size

    if args.input_size is not None and args.input_size < 1:
        raise UserError(f"--input-size must be >= 1, got {args.input_size}")
    # the size used, for the data too (imagefolder images are resized to it)
    args.input_size_used = args.input_size or default_size(model, args.arch or path)
    shape = getattr(model, "qmixprune_input_shape", None) or [3] + [args.input_size_used] * 2
    if args.input_size is not None:
        shape = [*shape[:-2], args.input_size, args.input_size]
    if isinstance(model, torch.jit.ScriptModule) and args.command not in ("count", "export"):
        raise UserError(f"{path} is TorchScript: it can be counted and exported, not pruned")
    x = torch.zeros(1, *shape)
    check_forward(model, x)  # a wrong size: one line naming the size the model runs at
    return model.eval(), x


def _analyze(args) -> int:
    from .graph import analyze

    model, x = _load(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = analyze(model, x, args.parts.split(",") if args.parts else None)
    print(graph.describe())
    for w in caught:
        print(f"warning: {w.message}")
    print(f"{len(graph.prunable)} of {len(graph.groups)} groups prunable")
    return EXIT_OK


def _count(args) -> int:
    import torch

    from .flops import format_table, layer_table

    model, x = _load(args)
    print(f"input {'x'.join(map(str, x.shape))} (--input-size to change)")
    if isinstance(model, torch.jit.ScriptModule):  # hooks do not fire: count its ops instead
        from .flops import op_macs

        ops = op_macs(model, x)
        print("TorchScript: MACs per op (per-layer rows need the module itself)")
        for op, n in sorted(ops.items(), key=lambda kv: -kv[1]):
            print(f"  {op:<24} {n:>14,}")
        params = sum(p.numel() for p in model.parameters())
        print(f"total {sum(ops.values()):,} MACs; params {params:,}")
        return EXIT_OK
    print(format_table(layer_table(model, x), sum(p.numel() for p in model.parameters())))
    return EXIT_OK


def _prune(args) -> int:
    from . import serialize
    from .budget import Budget, CostModel, uniform_counts
    from .device import resolve
    from .errors import UserError
    from .flops import count
    from .graph import analyze
    from .importance import ranks
    from .pruning import apply_plan, make_plan, plan_for_counts

    device = resolve(args.device)
    model, x = _load(args)
    model, x = model.to(device), x.to(device)  # ranking and removal where the model runs
    graph = analyze(model, x, args.parts.split(",") if args.parts else None)
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
        "patience": args.patience,
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
    from .device import resolve
    from .run.compress import run_search
    from .run.report import early_stop_text

    cfg = search_config(args)
    if args.target_latency is not None and args.target_flops is None:
        cfg = replace(cfg, env=replace(cfg.env, target_flops=None))  # latency alone
    cfg.env.validate()
    device = resolve(args.device)  # the run's one device decision, before any work
    args.device = str(device)
    table = _latency_table(args)
    _check_out(args, "search_config.json", cfg)
    model, _ = _load(args)
    model.to(device)
    data = _load_data(args, cfg.seed)
    _check_run(model, data, table)
    if not args.quiet:
        print(f"input: {_describe_input(data)}")
    with _owned_out(args) as out:
        result, _ = run_search(model, data, cfg, out, args.resume, args.quiet, table, device=device)
    if not args.quiet:
        print(
            f"best val reward {result.reward:.4f} at {result.macs_ratio:.4f} of the MACs after "
            f"{result.evaluations} evaluations ({result.seconds:.0f} s)"
            f"{early_stop_text(result.early_stop)}; wrote {out}/"
        )
    return EXIT_OK


def compress_config(args):
    """compress's config: defaults <- --preset <- --config file <- flags given."""
    from .config import build, merge, read_config
    from .run.compress import CompressConfig
    from .run.presets import preset

    flags = {
        "target_flops": args.target_flops,
        "seed": args.seed,
        "export": False if args.no_export else None,
        "int8": True if args.int8 else None,
        "search": {
            "episodes": args.episodes,
            "envs": args.envs,
            "max_evaluations": args.max_evaluations,
            "patience": args.patience,
            "env": {
                "steps": args.steps,
                "round_to": args.round_to,
                "min_channels": args.min_channels,
            },
        },
        "distill": {"epochs": args.epochs, "amp": False if args.no_amp else None},
        "device": args.device,
        "allow_untrained": True if args.allow_untrained else None,
        "keep_checkpoints": True if args.keep_checkpoints else None,
    }
    layers = merge(preset(args.preset), read_config(args.config))
    return build(CompressConfig, merge(layers, flags))


def _load_data(args, seed: int):
    """The run's data, fed as the model expects: --input-size (imagefolder), --mean/--std."""
    from .data import load_data
    from .inputs import parse_norm

    norm = parse_norm(args.mean, args.std)
    if args.data != "imagefolder" and args.input_size not in (None, 32):
        raise UserError(
            f"--input-size {args.input_size}: {args.data} images are 32x32; only imagefolder "
            "images are resized"
        )
    size = args.input_size_used if args.data == "imagefolder" else 32
    return load_data(args.data, args.data_dir, args.download, seed, image_size=size, norm=norm)


def _describe_input(data) -> str:
    from .inputs import describe

    return describe(data.input_shape, data.mean, data.std, data.norm_source)


def _check_teacher(model, data) -> float:
    """The model's test accuracy; a model at chance level on the user's data is refused
    before any long work."""
    from .run.compress import check_teacher
    from .train import evaluate

    acc = evaluate(model, data.test)
    check_teacher(acc, data.num_classes, len(data.test))
    return acc


def _compress(args) -> int:
    from .device import resolve
    from .run.compress import compress

    cfg = compress_config(args)
    if args.target_latency is not None and args.target_flops is None:
        cfg = replace(cfg, target_flops=None)  # latency alone, unless both were given
    if args.target_latency is not None:  # 0 too: validate() names it
        cfg = replace(cfg, target_latency=args.target_latency)
    cfg.resolved().search.env.validate()
    cfg.distill.validate()
    device = resolve(cfg.device)  # the run's one device decision, before any work
    cfg = replace(cfg, device=str(device))
    args.device = cfg.device  # torchrun's group joins on it (NCCL or gloo)
    table = _latency_table(args)
    _check_out(args, "config.json", cfg.resolved())
    model, _ = _load(args)
    model.to(device)
    data = _load_data(args, cfg.seed)
    _check_run(model, data, table, cfg.distill.batch_size if cfg.distill.epochs else None)
    acc = None if cfg.allow_untrained else _check_teacher(model, data)
    with _owned_out(args) as out:
        compress(
            model,
            data,
            config=cfg,
            out=out,
            resume=args.resume,
            quiet=args.quiet,
            latency_table=table,
            teacher_score=acc,
        )
    if not args.quiet:
        print(_wrote(out))
    return EXIT_OK


def _wrote(out) -> str:
    """The closing line: what the run left in OUT."""
    from pathlib import Path

    names = sorted(p.name for p in Path(out).iterdir() if not p.name.startswith("."))
    return f"wrote {out}/: {', '.join(names)}"


def _inputs(args) -> list:
    """The paths a run reads: OUT may not be one of them, nor hold one it would clear."""
    names = ("model", "data_dir", "config", "latency_table")
    paths = [getattr(args, n, None) for n in names]
    return [p for p in paths if p is not None and os.path.exists(p)]


def _check_out(args, record: str, cfg) -> None:
    """OUT checked before anything is loaded or written, by every rank under torchrun (so
    that all of them stop on a bad OUT and only rank 0 says why); on --resume, the
    configuration too, before OUT's record of it is rewritten."""
    from .config import as_dict
    from .run.outdir import check, check_same_config
    from .run.preflight import check_checkpoints

    check(args.output, args.overwrite, args.resume, _inputs(args))
    if args.resume:
        check_same_config(args.output, record, as_dict(cfg))
        check_checkpoints(args.output)


def _check_run(model, data, table, batch_size=None) -> None:
    from .run.preflight import check_run as check

    check(model, data, table, batch_size)


@contextlib.contextmanager
def _owned_out(args):
    """OUT created (or cleared), marked and locked by rank 0 for the run (see outdir)."""
    from pathlib import Path

    from .distributed import barrier, init, is_main
    from .run.outdir import claim

    init(getattr(args, "device", None))  # NCCL on a GPU device, gloo on the CPU
    owner = claim(args.output, args.overwrite, args.resume) if is_main() else None
    with owner or contextlib.nullcontext(Path(args.output)) as out:
        barrier()
        yield out


def _latency_table(args) -> dict | None:
    from .latency import load_table

    if args.latency_table is None:
        if args.target_latency is not None:
            raise UserError("--target-latency needs --latency-table (from `qmixprune profile`)")
        return None
    return load_table(args.latency_table)


def _profile(args) -> int:
    from .budget import CostModel
    from .deploy.profile import engine_timer, format_table, profile, save_table
    from .device import resolve
    from .graph import analyze

    device = resolve(args.device)
    # TensorRT: every layer and whole model timed as its own engine (checked before loading)
    timer = engine_timer(args.precision, args.runs) if args.provider == "tensorrt" else None
    model, x = _load(args)
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
    return EXIT_OK


def _export(args) -> int:
    from pathlib import Path

    from .deploy import tensorrt
    from .deploy.export import export_onnx

    if args.tensorrt and not tensorrt.available():
        raise UserError(tensorrt.INSTALL_HINT)
    int8 = args.int8 or args.tensorrt == "int8"  # TensorRT INT8 reads the Q/DQ model
    if int8 and args.fp16:
        raise UserError("--int8 and --fp16 exclude each other: pick one precision")
    if args.calib_batches < 1 or (args.fixed_batch is not None and args.fixed_batch < 1):
        raise UserError("--calib-batches and --fixed-batch must be >= 1")
    if args.tensorrt and args.fixed_batch:
        raise UserError("TensorRT engines need a free batch axis: drop --fixed-batch")
    profile = tensorrt.BatchProfile.parse(args.trt_batch) if args.tensorrt else None
    model, x = _load(args)
    if args.fixed_batch:
        x = x.repeat(args.fixed_batch, *[1] * (x.dim() - 1))
    if not int8:
        dynamic = not args.fixed_batch
        res = export_onnx(
            model, args.output, x, args.opset, dynamic, args.fp16, simplify=args.simplify
        )
        print(
            f"wrote {res.path} (opset {res.opset}; ONNX Runtime vs PyTorch max |diff| "
            f"{res.max_abs_diff:.2e})"
        )
    else:
        import tempfile

        from .deploy.quantize import quantize_checked

        data = _load_data(args, seed=0)
        with tempfile.TemporaryDirectory() as d:
            dynamic = not args.fixed_batch
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
            res.path, Path(res.path).with_suffix(".engine"), args.tensorrt, profile
        )
        print(f"wrote {engine} (TensorRT {args.tensorrt})")
    return EXIT_OK


def _bench(args) -> int:
    from .deploy.bench import run

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
