"""MACs and parameter counts, whole-model and per layer.

MACs count the multiply-accumulates of Conv and Linear layers for ONE input sample (the
convention of the pruning literature: CIFAR VGG-16 has about 313.7M); normalisation and
activations are not counted. Parameters count every parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class LayerCount:
    name: str
    kind: str
    out_shape: tuple[int, ...]
    macs: int
    params: int


def layer_table(model: nn.Module, example_input: torch.Tensor) -> list[LayerCount]:
    """One row per Conv/Linear call, in execution order (a module called twice: two rows)."""
    return measure(model, example_input)[0]


def measure(model: nn.Module, example_input: torch.Tensor) -> tuple[list[LayerCount], object]:
    """``layer_table``'s rows and the model's output, from one forward pass in eval mode (the
    modes are restored): a run measures its model once and checks its output from the same
    pass."""
    rows: list[LayerCount] = []
    batch = example_input.shape[0]
    param = next(model.parameters(), None)
    if param is not None:  # counted where the model is (a GPU model, a CPU example)
        example_input = example_input.to(param.device)

    def hook(name):
        def fn(mod, inputs, output):
            per_sample = output.numel() // batch
            if isinstance(mod, nn.modules.conv._ConvTransposeNd):
                # every input entry feeds out/groups x kernel outputs (the output-side
                # count would be stride^2 too high)
                per_in = inputs[0].numel() // batch
                macs = per_in * (mod.out_channels // mod.groups) * math.prod(mod.kernel_size)
            elif isinstance(mod, nn.modules.conv._ConvNd):
                macs = per_sample * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
            else:
                macs = per_sample * mod.in_features
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            rows.append(LayerCount(name, type(mod).__name__, tuple(output.shape[1:]), macs, params))

        return fn

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            output = model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return rows, output


def count(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """``(macs, params)`` of ``model`` for one sample shaped like ``example_input[0]``."""
    return totals(model, layer_table(model, example_input))


def totals(model: nn.Module, rows: list[LayerCount]) -> tuple[int, int]:
    """``(macs, params)`` from ``model``'s measured ``rows`` (see ``measure``)."""
    return sum(r.macs for r in rows), sum(p.numel() for p in model.parameters())


def op_macs(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """MACs per aten op for one sample, counted by running the model under PyTorch's
    FLOP counter: it sees through TorchScript, where forward hooks (``layer_table``) do not
    fire. Convolutions and matrix products; half the FLOPs the counter reports."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(example_input)
    batch = example_input.shape[0]
    ops = counter.get_flop_counts().get("Global", {})
    return {str(op).removeprefix("aten."): int(n) // 2 // batch for op, n in ops.items()}


def format_table(rows: list[LayerCount], total_params: int | None = None) -> str:
    """A plain-text table of :func:`layer_table` rows with each layer's share of the MACs.

    A row's params are its layer's own (weight and bias); with ``total_params`` (every
    parameter of the model) a row gives the rest (BatchNorm, norms, embeddings), so that the
    params column adds up to the total."""
    total = sum(r.macs for r in rows) or 1
    lines = [f"{'layer':<32} {'type':<8} {'output':<16} {'MACs':>12} {'share':>6} {'params':>10}"]
    for r in rows:
        shape = "x".join(map(str, r.out_shape))
        lines.append(
            f"{r.name:<32} {r.kind:<8} {shape:<16} {r.macs:>12,} {r.macs / total:>6.1%} "
            f"{r.params:>10,}"
        )
    if total_params is None:
        lines.append(f"{'total':<57} {total:>12,}")
        return "\n".join(lines)
    # a layer called twice has two rows but one set of weights
    own = sum({r.name: r.params for r in rows}.values())
    rest = total_params - own
    lines.append(f"{'other (BatchNorm, norms, ...)':<57} {0:>12,} {'':>6} {rest:>10,}")
    lines.append(f"{'total':<57} {total:>12,} {'':>6} {total_params:>10,}")
    return "\n".join(lines)
