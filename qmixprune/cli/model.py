"""``analyze``, ``count`` and ``prune``: one model, no data; and how every command reads
its MODEL argument (``load_model``)."""

from __future__ import annotations

import argparse
import warnings

from ..errors import UserError
from ..files import check_writable_file
from .options import IMPORTANCES, device_arg, model_args


def add_arguments(command: str, sp: argparse.ArgumentParser) -> None:
    from .options import formatter_for

    sp.formatter_class = formatter_for()
    model_args(sp)
    if command == "prune":
        goal = sp.add_mutually_exclusive_group(required=True)
        goal.add_argument("--ratio", type=float, help="fraction of each group's channels removed")
        goal.add_argument("--target-flops", type=float, help="fraction of the MACs to keep")
        sp.add_argument(
            "--importance",
            default="l1",
            choices=IMPORTANCES,
            help="filter ranking: the least important filters go",
        )
        sp.add_argument("--round-to", type=int, default=8, help="kept channels a multiple of this")
        sp.add_argument("--min-channels", type=int, default=1, help="no group keeps fewer")
        sp.add_argument("-o", "--output", required=True, help="where to write the pruned model")
        device_arg(sp)
    if command in ("analyze", "prune"):
        sp.add_argument(
            "--parts",
            metavar="A,B",
            help="submodules to analyse when the model cannot be traced whole (detectors; "
            "default: the largest ones that trace)",
        )


def run(args: argparse.Namespace) -> int:
    return {"analyze": analyze, "count": count, "prune": prune}[args.command](args)


def load_model(args: argparse.Namespace, check: bool = True):
    """MODEL as the flags describe it, in eval mode, and a zero input of one sample. With
    ``check``, the model is run on it once: a wrong size is one line naming the size it
    runs at (a search or compress run checks that in its preflight instead)."""
    import torch

    from .. import models, serialize
    from ..inputs import check_forward, default_size

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
    if check:
        check_forward(model, x)  # a wrong size: one line naming the size the model runs at
    return model.eval(), x


def analyze(args) -> int:
    from ..graph import analyze

    model, x = load_model(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = analyze(model, x, args.parts.split(",") if args.parts else None)
    print(graph.describe())
    for w in caught:
        print(f"warning: {w.message}")
    print(f"{len(graph.prunable)} of {len(graph.groups)} groups prunable")
    return 0


def count(args) -> int:
    import torch

    from ..flops import format_table, layer_table, op_macs

    model, x = load_model(args)
    print(f"input {'x'.join(map(str, x.shape))} (--input-size to change)")
    if isinstance(model, torch.jit.ScriptModule):  # hooks do not fire: count its ops instead
        ops = op_macs(model, x)
        print("TorchScript: MACs per op (per-layer rows need the module itself)")
        for op, n in sorted(ops.items(), key=lambda kv: -kv[1]):
            print(f"  {op:<24} {n:>14,}")
        params = sum(p.numel() for p in model.parameters())
        print(f"total {sum(ops.values()):,} MACs; params {params:,}")
        return 0
    print(format_table(layer_table(model, x), sum(p.numel() for p in model.parameters())))
    return 0


def prune(args) -> int:
    from .. import serialize
    from ..budget import Budget, CostModel, uniform_counts
    from ..device import resolve
    from ..flops import count
    from ..graph import analyze
    from ..importance import ranks
    from ..pruning import apply_plan, make_plan, plan_for_counts

    check_writable_file(args.output)
    device = resolve(args.device)
    model, x = load_model(args)
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
    return 0
