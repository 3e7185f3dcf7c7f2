"""ONNX export with a checker pass and an automatic ONNX Runtime parity check."""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError
from ..files import atomic_path
from .bench import onnxruntime

PARITY_TOLERANCE = 1e-4  # max |ORT - PyTorch| allowed in fp32


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float
    opset: int
    fp16: bool
    simplified: bool = False


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_input: torch.Tensor,
    opset: int = 17,
    dynamic_batch: bool = True,
    fp16: bool = False,
    check_inputs: list[torch.Tensor] | None = None,
    simplify: bool = False,
) -> ExportResult:
    """Export ``model`` to ``path`` (atomically), validate it with onnx.checker and compare
    ONNX Runtime's outputs with PyTorch's on random and given inputs. ``simplify`` runs
    onnxslim (constant folding, dead nodes, op fusions) before the checks."""
    try:
        import onnx
    except ImportError as exc:
        raise UserError(f"ONNX export needs onnx: pip install onnx ({exc})") from exc
    onnxruntime("ONNX export (its parity check)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if any(t.device.type != "cpu" for t in model.parameters()):
        # the export and its ONNX Runtime parity check run on the CPU; the caller's model
        # stays on its device (a copy moves)
        model = copy.deepcopy(model).cpu()
    model, example_input = model.eval(), example_input.cpu()
    with atomic_path(path, ".onnx") as tmp:  # renamed onto path once every check passed
        with warnings.catch_warnings(record=True) as caught:  # deprecation notices: dropped
            warnings.simplefilter("always")
            torch.onnx.export(
                model,
                (example_input,),
                tmp,
                opset_version=opset,
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}
                if dynamic_batch
                else None,
            )
        _warn_input_dependent(caught)
        proto = onnx.load(tmp)
        if simplify:
            proto = _simplify(proto)
            onnx.save(proto, tmp)
        if fp16:
            proto = to_fp16(proto)
            onnx.save(proto, tmp)
        onnx.checker.check_model(proto)
        inputs = [torch.randn_like(example_input)] + list(check_inputs or [])
        diffs = [_max_diff(model, tmp, x, fp16) for x in inputs]
        diff = max(d for d, _ in diffs)
        # absolute for outputs of order 1; relative for untrained nets with huge logits
        tol = (1e-2 if fp16 else PARITY_TOLERANCE) * max(1.0, max(s for _, s in diffs))
        if diff > tol:
            raise UserError(f"ONNX Runtime disagrees with PyTorch by {diff:.2e} (> {tol:g})")
    return ExportResult(path, diff, opset, fp16, simplify)


def _warn_input_dependent(caught: list) -> None:
    """The tracer turned a tensor into a Python bool: an ``if`` on the input's values, of
    which the ONNX graph keeps only the branch the example input took."""
    found = [
        w
        for w in caught
        if issubclass(w.category, torch.jit.TracerWarning) and "boolean" in str(w.message)
    ]
    if found:
        where = f"{Path(found[0].filename).name}:{found[0].lineno}"
        warnings.warn(
            f"the model's control flow depends on its input values ({where}): the ONNX "
            "graph keeps only the branch the example input took; check its outputs on other "
            "inputs, or make the branch a tensor op (torch.where)",
            UserWarning,
            stacklevel=3,
        )


def _simplify(proto):
    try:
        import onnxslim
    except ImportError as exc:
        raise UserError(
            "--simplify needs onnxslim: pip install 'qmixprune[simplify]' (or onnxslim)"
        ) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnxslim.slim(proto)


def to_fp16(proto):
    """Cast float32 initialisers and I/O to float16 (weights only; ops follow their inputs)."""
    from onnx import TensorProto, numpy_helper

    for init in proto.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name)
            )
    for vi in [*proto.graph.input, *proto.graph.output]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    return proto


def _max_diff(model: nn.Module, onnx_path: str, x: torch.Tensor, fp16: bool):
    """(max |ORT - PyTorch|, max |PyTorch|) on input ``x``."""
    ort = onnxruntime("ONNX export")
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    feed = x.numpy().astype(np.float16 if fp16 else np.float32)
    got = sess.run(None, {sess.get_inputs()[0].name: feed})[0].astype(np.float64)
    with torch.no_grad():
        want = model(x).double().numpy()
    return float(np.abs(got - want).max()), float(np.abs(want).max())
