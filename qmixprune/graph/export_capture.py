"""Capture a model with torch.export (non-strict) when torch.fx cannot trace it: the ATen
graph is rewritten so that each conv, linear and norm call names its module again (found
through the parameters it reads), which is what the propagation reasons about."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import TraceError
from .fx_capture import first_line, is_norm_leaf

_aten = torch.ops.aten
# ATen op -> (module types it stands for, position of the parameter naming the module)
_MODULE_OPS = {
    _aten.conv1d.default: ((nn.Conv1d,), 1),
    _aten.conv2d.default: ((nn.Conv2d,), 1),
    _aten.linear.default: ((nn.Linear,), 1),
    _aten.conv_transpose1d.default: ((nn.ConvTranspose1d,), 1),
    _aten.conv_transpose2d.input: ((nn.ConvTranspose2d,), 1),
    _aten.batch_norm.default: (None, 1),
    _aten.layer_norm.default: ((nn.LayerNorm,), 2),
}


def export_capture(model: nn.Module, example_input: torch.Tensor) -> fx.Graph:
    """The model's graph as torch.export sees it, modules restored (nodes whose module is
    the model's own carry ``call_module``; everything else stays an ATen call). Traced in
    training mode, as the fx capture is, with the train/eval flags left as they were."""
    modes = {m: m.training for m in model.modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        model.train()
        program = torch.export.export(model, (example_input,), strict=False)
    except Exception as exc:  # export raises many types; all mean "cannot capture"
        raise TraceError(f"cannot export {type(model).__name__}: {first_line(exc)}") from exc
    finally:
        for m, mode in modes.items():
            m.training = mode
        with torch.no_grad():  # BN statistics seen in training mode stay as they were
            for k, v in model.state_dict().items():
                v.copy_(state[k])
    sig = program.graph_signature
    attrs = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    attrs.update(getattr(sig, "inputs_to_lifted_tensor_constants", {}))
    return _restore_modules(program.graph_module.graph, attrs, dict(model.named_modules()))


def _restore_modules(graph: fx.Graph, attrs: dict[str, str], modules: dict) -> fx.Graph:
    out = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node.op == "placeholder" and node.name in attrs:
            new = out.get_attr(attrs[node.name])
        elif node.op == "call_function" and _module_of(node, attrs, modules) is not None:
            name = _module_of(node, attrs, modules)
            new = out.call_module(name, (env[node.args[0]],))
            new.meta["aten"] = True
        else:
            new = out.node_copy(node, lambda n: env[n])
        new.meta.update(node.meta)
        env[node] = new
    return out


def _module_of(node: fx.Node, attrs: dict[str, str], modules: dict) -> str | None:
    """The module an ATen conv/linear/norm call runs: the owner of the parameter it
    reads, if that module is of the matching type."""
    rule = _MODULE_OPS.get(node.target)
    if rule is None or len(node.args) <= rule[1]:
        return None
    types, pos = rule
    param = node.args[pos]
    if node.target is _aten.batch_norm.default and param is None:
        param = node.args[3]  # affine=False: the running mean names it
    if not isinstance(param, fx.Node) or param.name not in attrs:
        return None
    owner = attrs[param.name].rpartition(".")[0]
    mod = modules.get(owner)
    if mod is None:
        return None
    if types is None:
        return owner if is_norm_leaf(mod) and not isinstance(mod, nn.LayerNorm) else None
    return owner if isinstance(mod, types) else None
