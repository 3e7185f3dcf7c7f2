"""The single input of an ONNX model, read without torch (quantization and TensorRT use it)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def single_input(path: str | Path, needs: str):
    """The model at ``path`` (an ``onnx.ModelProto``) and its graph input that is not an
    initializer (an ``onnx.ValueInfoProto``); ``needs`` opens the one-line error when there
    is not exactly one, e.g. "INT8 calibration needs a model with one input"."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UserError(f"{path} is not an ONNX model: {str(exc).splitlines()[0]}") from exc
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UserError(f"{needs}; {path} has {len(inputs)}")
    return proto, inputs[0]
