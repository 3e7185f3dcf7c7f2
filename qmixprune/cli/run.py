"""``search``, ``compress`` and ``demo``: runs that own an output folder.

Each is: the config from defaults <- preset <- --config <- flags; OUT checked (read only);
model and data loaded; every other check once (``run.preflight``); OUT claimed; the
stages. Nothing is created or written before the last check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import replace
from pathlib import Path

from ..errors import UserError
from .model import load_model
from .options import (
    COMPRESS_OPTIONS,
    SEARCH_OPTIONS,
    Option,
    add_config_options,
    config_layer,
    data_args,
    device_arg,
    formatter_for,
    model_args,
    run_args,
)

PRESET_CHOICES = ("quick", "default", "thorough")


def add_arguments(command: str, sp: argparse.ArgumentParser) -> None:
    if command == "demo":
        return _demo_arguments(sp)
    from ..run.config import CompressConfig
    from ..search import SearchConfig

    cls, options = (
        (SearchConfig, SEARCH_OPTIONS)
        if command == "search"
        else (
            CompressConfig,
            (*COMPRESS_OPTIONS, Option("device", help=_DEVICE_HELP)),
        )
    )
    sp.formatter_class = formatter_for(cls, options)
    model_args(sp)
    data_args(sp)
    run_args(sp)
    add_config_options(sp, cls, options)
    if command == "search":
        device_arg(sp)
    else:
        sp.add_argument(
            "--preset",
            choices=PRESET_CHOICES,
            help="run size (episodes / patience / epochs; docs/reference.md: presets); --config "
            "and flags override it (default: default)",
        )


_DEVICE_HELP = (
    "where torch runs: auto (the local GPU when one is visible, under torchrun "
    "cuda:$LOCAL_RANK, else the CPU), cpu, cuda, cuda:N"
)


def run(args: argparse.Namespace) -> int:
    return {"search": search, "compress": compress, "demo": demo}[args.command](args)


def search_config(args: argparse.Namespace):
    """The search's config: defaults <- --config file <- flags given on the command line."""
    from ..config import build, merge, read_config
    from ..search import SearchConfig

    cfg = build(SearchConfig, merge(read_config(args.config), config_layer(args)))
    if args.target_latency is not None and args.target_flops is None:
        cfg = replace(cfg, env=replace(cfg.env, target_flops=None))  # latency alone
    return cfg


def compress_config(args: argparse.Namespace):
    """compress's config: defaults <- --preset <- --config file <- flags given."""
    from ..config import build, merge, read_config
    from ..run.config import CompressConfig
    from ..run.presets import preset

    layers = merge(preset(args.preset), read_config(args.config))
    cfg = build(CompressConfig, merge(layers, config_layer(args)))
    if args.target_latency is not None and args.target_flops is None:
        cfg = replace(cfg, target_flops=None)  # latency alone, unless both were given
    return cfg


def search(args: argparse.Namespace) -> int:
    from ..run.compress import run_search
    from ..run.preflight import check_search
    from ..run.report import describe_input, early_stop_text

    cfg = search_config(args)
    table = _latency_table(args)
    _check_out(args)
    model, _ = load_model(args, check=False)
    data = load_data(args, cfg.seed, model)
    out = Path(args.output)
    ready = check_search(
        model, data, cfg, device=args.device, out=out, resume=args.resume, latency_table=table
    )
    args.device = str(ready.device)  # torchrun's group joins on it (NCCL or gloo)
    if not args.quiet:
        print(f"input: {describe_input(ready.input)}")
    with _owned_out(args) as out:
        found = run_search(model, data, cfg, ready, out, args.resume, args.quiet)
    result = found.result
    if not args.quiet:
        print(
            f"best val reward {result.reward:.4f} at {result.macs_ratio:.4f} of the MACs after "
            f"{result.evaluations} evaluations ({result.seconds:.0f} s)"
            f"{early_stop_text(result.early_stop)}; wrote {out}/"
        )
    return 0


def compress(args: argparse.Namespace) -> int:
    from ..run.compress import run_stages
    from ..run.preflight import check_compress

    cfg = compress_config(args)
    table = _latency_table(args)
    _check_out(args)
    model, _ = load_model(args, check=False)
    data = load_data(args, cfg.seed, model)
    cfg, ready = check_compress(
        model, data, cfg, out=args.output, resume=args.resume, latency_table=table
    )
    args.device = cfg.device  # torchrun's group joins on it (NCCL or gloo)
    with _owned_out(args) as out:
        run_stages(model, data, cfg, ready, out, args.resume, args.quiet)
    if not args.quiet:
        print(_wrote(out))
    return 0


def load_data(args: argparse.Namespace, seed: int, model=None):
    """The run's data, fed as the model expects: --input-size (imagefolder), --mean/--std,
    grey images given as many channels as ``model``'s first convolution takes."""
    from ..data import load_data
    from ..inputs import parse_norm

    norm = parse_norm(args.mean, args.std)
    if args.data != "imagefolder" and args.input_size not in (None, 32):
        raise UserError(
            f"--input-size {args.input_size}: {args.data} images are 32x32; only imagefolder "
            "images are resized"
        )
    size = args.input_size_used if args.data == "imagefolder" else 32
    channels = first_conv_channels(model) if model is not None else 3
    return load_data(
        args.data, args.data_dir, args.download, seed, image_size=size, norm=norm, channels=channels
    )


def first_conv_channels(model) -> int:
    """The input channels of ``model``'s first convolution (3 when it has none)."""
    import torch.nn as nn

    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def _wrote(out) -> str:
    """The closing line: what the run left in OUT."""
    names = sorted(p.name for p in Path(out).iterdir() if not p.name.startswith("."))
    return f"wrote {out}/: {', '.join(names)}"


def _inputs(args) -> list:
    """The paths a run reads: OUT may not be one of them, nor hold one it would clear."""
    names = ("model", "data_dir", "config", "latency_table")
    paths = [getattr(args, n, None) for n in names]
    return [p for p in paths if p is not None and os.path.exists(p)]


def _check_out(args) -> None:
    """OUT checked before anything is loaded or written, by every rank under torchrun (so
    that all of them stop on a bad OUT and only rank 0 says why)."""
    from ..run.outdir import check

    check(args.output, args.overwrite, args.resume, _inputs(args))


@contextlib.contextmanager
def _owned_out(args):
    """OUT created (or cleared), marked and locked by rank 0 for the run (see outdir)."""
    from ..distributed import barrier, init, is_main
    from ..run.outdir import claim

    init(getattr(args, "device", None))  # NCCL on a GPU device, gloo on the CPU
    owner = claim(args.output, args.overwrite, args.resume) if is_main() else None
    with owner or contextlib.nullcontext(Path(args.output)) as out:
        barrier()
        yield out


def _latency_table(args) -> dict | None:
    from ..latency import load_table

    return load_table(args.latency_table) if args.latency_table is not None else None


def _demo_arguments(d: argparse.ArgumentParser) -> None:
    d.formatter_class = formatter_for()
    d.add_argument("-o", "--output", default="qmixprune-demo", help="output folder")
    d.add_argument("--quick", action="store_true", help="fewer epochs and evaluations")
    d.add_argument("--target-flops", type=float, default=0.4, help="fraction of the MACs to keep")
    d.add_argument("--seed", type=int, default=0, help="makes the run repeatable")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output")
    d.add_argument("--quiet", action="store_true", help="no progress display")
    device_arg(d)
    d.add_argument(
        "--no-amp",
        action="store_true",
        help="full-precision fine-tuning on CUDA (default: bf16 autocast, or fp16 with a "
        "GradScaler on GPUs without bf16; the CPU always runs fp32)",
    )


def demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(args)
