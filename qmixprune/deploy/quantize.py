"""INT8 ONNX by static post-training quantization, checked against the fp32 model.

The INT8 model carries QuantizeLinear/DequantizeLinear (Q/DQ) pairs: weights quantized per
output channel (symmetric int8), activation ranges calibrated on training batches. The
activations are quantized for the runtime that will read the model:

- ``onnxruntime`` (the CPU): uint8, asymmetric. ONNX Runtime's CPU kernels fuse Q/DQ pairs
  into integer ops (QLinearConv, QLinearAdd) for uint8 activations; with int8 activations it
  ran about half of ResNet-56's convolutions as DequantizeLinear + Transpose + fp32 Conv and
  the INT8 model was slower than the fp32 one (``python benchmarks/ort_ops.py --int8``).
- ``tensorrt``: int8, symmetric (zero point 0), the only form TensorRT's explicit
  quantization reads; biases stay float (TensorRT does not dequantize int32 tensors).

The quantizer is ``onnxruntime.quantization``, or NVIDIA ModelOpt's ONNX quantization (its
Q/DQ placement follows TensorRT's rules), which ``auto`` picks for TensorRT when it is
installed. Needs numpy and onnxruntime only (no torch).

On x86 CPUs without VNNI, ONNX Runtime's uint8 x int8 kernels add pairs of products in 16
bits, which saturate with full 8-bit weights; the weights are then quantized to 7 bits
(``reduce_range``, as onnxruntime's documentation advises for such CPUs). The check of a
TensorRT-form model runs its Q/DQ pairs in float (``session.disable_quant_qdq``), as TensorRT
applies their scales, not ONNX Runtime's integer kernels.
"""

from __future__ import annotations

import platform
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_path
from .bench import INSTALL_ORT
from .onnx_input import single_input

QUANTIZERS = ("auto", "onnxruntime", "modelopt")
RUNTIMES = ("onnxruntime", "tensorrt")  # who reads the INT8 model: its activation type
# The INT8 model must pick the fp32 model's class on at least this fraction of the check
# inputs, and its logits may differ from the fp32 model's by at most this fraction of their
# RMS (8-bit activations carry ~1 % rounding noise per layer; it accumulates with depth).
MIN_AGREEMENT = 0.95
MAX_RELATIVE_RMS = 0.25


@dataclass
class QuantizeResult:
    path: Path
    quantizer: str
    calib_samples: int
    agreement: float  # fraction of check inputs where INT8 and fp32 pick the same class
    relative_rms: float  # RMS(int8 - fp32 logits) / RMS(fp32 logits)
    fp32_acc: float | None = None  # test accuracy, both run by ONNX Runtime
    int8_acc: float | None = None

    def summary(self) -> str:
        acc = ""
        if self.fp32_acc is not None:
            acc = f"; test acc fp32 {self.fp32_acc:.4f}, int8 {self.int8_acc:.4f}"
        return (
            f"wrote {self.path} (INT8 Q/DQ by {self.quantizer}, {self.calib_samples} calibration "
            f"samples; vs fp32: same class on {self.agreement:.1%} (>= {MIN_AGREEMENT:.0%}), "
            f"logit error {self.relative_rms:.3f} of RMS (<= {MAX_RELATIVE_RMS}){acc})"
        )


def cpu_has_vnni(cpuinfo: str | None = None, machine: str | None = None) -> bool:
    """Whether this CPU's integer dot products avoid the 16-bit saturation described in the
    module docstring: True off x86 and where the flags cannot be read (nothing to avoid
    there), else whether ``/proc/cpuinfo`` (or ``cpuinfo``) lists a VNNI flag."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_vnni", "avx_vnni", "avx512vnni"}) or not flags


def input_shape(onnx_path: str | Path) -> tuple[str, list]:
    """Name and shape of the model's (single) input; the batch axis may be a name."""
    _, inp = single_input(onnx_path, "INT8 calibration needs a model with one input")
    dims = inp.type.tensor_type.shape.dim
    return inp.name, [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def calibration_arrays(
    data: Iterable, shape: list, batch: int = 32, batches: int = 8
) -> list[np.ndarray]:
    """Up to ``batches`` float32 batches of ``batch`` inputs from ``data`` (samples ``x`` or
    ``(x, label)`` pairs), each sample checked against the model's input ``shape`` (batch axis
    first, then fixed dimensions); a mismatch is an error naming both shapes."""
    if batch < 1 or batches < 1:
        raise UserError(f"calibration needs a batch and a batch count >= 1, got {batch}, {batches}")
    want = list(shape[1:])
    fixed = isinstance(shape[0], int) and shape[0] > 0
    if fixed:
        batch = shape[0]  # a model exported with a fixed batch takes only that batch
    out, current = [], []
    for item in data:
        x = np.asarray(item[0] if isinstance(item, (tuple, list)) else item, dtype=np.float32)
        if x.ndim != len(want) or any(
            isinstance(d, int) and d > 0 and d != n for d, n in zip(want, x.shape)
        ):
            raise UserError(
                f"calibration samples have shape {list(x.shape)} but the model takes {want}: "
                "calibrate on the data the model was trained on (--data, --data-dir, --input-size)"
            )
        current.append(x)
        if len(current) == batch:
            out.append(np.stack(current))
            current = []
            if len(out) == batches:
                break
    if current and not fixed:
        out.append(np.stack(current))
    if not out:
        raise UserError(f"INT8 calibration needs at least {batch} samples")
    return out


def quantize(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: list[np.ndarray],
    quantizer: str = "auto",
    runtime: str = "onnxruntime",
    reduce_range: bool | None = None,
) -> str:
    """Write a Q/DQ INT8 copy of ``fp32_path`` for ``runtime`` to ``out_path`` (atomically);
    returns the quantizer used. ``reduce_range`` (7-bit weights, onnxruntime's quantizer only)
    defaults to this CPU lacking VNNI when the runtime is ONNX Runtime."""
    if quantizer not in QUANTIZERS:
        raise UserError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
    if runtime not in RUNTIMES:
        raise UserError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if quantizer == "auto":  # ModelOpt writes TensorRT's int8 Q/DQ, whatever the runtime
        use_modelopt = runtime == "tensorrt" and _modelopt() is not None
        quantizer = "modelopt" if use_modelopt else "onnxruntime"
    out_path = Path(out_path)
    with atomic_path(out_path, ".onnx") as tmp:
        try:
            if quantizer == "modelopt":
                _quantize_modelopt(Path(fp32_path), tmp, calibration)
            else:
                if reduce_range is None:
                    reduce_range = runtime == "onnxruntime" and not cpu_has_vnni()
                _quantize_ort(Path(fp32_path), tmp, calibration, runtime, reduce_range)
        except UserError:
            raise
        except Exception as exc:  # the quantizers' own errors, deep inside them
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"{quantizer} could not quantize {fp32_path}: {first}") from exc
    return quantizer


def _modelopt():
    try:
        from modelopt.onnx import quantization
    except Exception:  # not installed, or installed without its ONNX extra
        return None
    return quantization


def _quantize_modelopt(src: Path, dst: Path, calibration: list[np.ndarray]) -> None:
    mq = _modelopt()
    if mq is None:
        raise UserError("--quantizer modelopt needs nvidia-modelopt[onnx]: pip install it")
    mq.quantize(
        onnx_path=str(src),
        quantize_mode="int8",
        calibration_data=np.concatenate(calibration),
        calibration_method="max",
        calibration_eps=["cpu"],
        output_path=str(dst),
    )


def _quantize_ort(
    src: Path, dst: Path, calibration: list[np.ndarray], runtime: str, reduce_range: bool = False
) -> None:
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise UserError(
            f"INT8 needs onnxruntime's quantization tools ({exc}): {INSTALL_ORT}"
        ) from exc
    name, _ = input_shape(src)
    # see the module docstring: uint8 for ONNX Runtime's fused CPU kernels, int8 with zero
    # point 0 for TensorRT
    tensorrt = runtime == "tensorrt"
    activation = QuantType.QInt8 if tensorrt else QuantType.QUInt8

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {name: x}

    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # shape inference and graph cleanup first, as onnxruntime's docs advise: the
        # quantizer places Q/DQ pairs only where it knows tensor shapes
        prepared = Path(d) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))
        quantize_static(
            str(prepared),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=activation,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # biases stay float for TensorRT: QDQ mode stores them as int32 behind a
            # DequantizeLinear, which TensorRT's dequantize layer does not take (it folds
            # the float bias into its INT8 kernels itself)
            extra_options={
                "ActivationSymmetric": tensorrt,
                "WeightSymmetric": True,
                "QuantizeBias": not tensorrt,
            },
        )


def logits(
    onnx_path: str | Path,
    inputs: Iterable[np.ndarray],
    batch: int = 64,
    qdq_in_float: bool = False,
) -> np.ndarray:
    """The model's outputs on ``inputs`` (ONNX Runtime, CPU), stacked; ``qdq_in_float`` runs
    Q/DQ pairs as float scale-and-round instead of fusing them into integer kernels."""
    from .bench import session

    config = {"session.disable_quant_qdq": "1"} if qdq_in_float else None
    sess = session(onnx_path, config=config)
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else batch
    xs = np.concatenate([np.asarray(x, dtype=np.float32) for x in inputs])
    out = []
    for i in range(0, len(xs), step):
        chunk = xs[i : i + step]
        if isinstance(fixed, int) and len(chunk) < step:  # a fixed batch: pad, then trim
            chunk = np.concatenate(
                [chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)]
            )
        out.append(sess.run(None, {name: chunk})[0][: len(xs) - i])
    return np.concatenate(out)


def compare(
    fp32_path: str | Path,
    int8_path: str | Path,
    inputs: list[np.ndarray],
    labels: np.ndarray | None = None,
    runtime: str = "onnxruntime",
) -> dict:
    """Agreement and logit error of the INT8 model against the fp32 one on ``inputs``, and
    both accuracies when ``labels`` are given; raises when outside the stated tolerance.
    A ``tensorrt`` model is run with its Q/DQ pairs in float (see the module docstring)."""
    a = logits(fp32_path, inputs).astype(np.float64)
    b = logits(int8_path, inputs, qdq_in_float=runtime == "tensorrt").astype(np.float64)
    agreement = float(np.mean(a.argmax(1) == b.argmax(1)))
    rel = float(np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(a**2)), 1e-12))
    out = {"agreement": agreement, "relative_rms": rel}
    if labels is not None:
        out["fp32_acc"] = float(np.mean(a.argmax(1) == labels))
        out["int8_acc"] = float(np.mean(b.argmax(1) == labels))
    if agreement < MIN_AGREEMENT or rel > MAX_RELATIVE_RMS:
        raise UserError(
            f"the INT8 model disagrees with the fp32 one (same class on {agreement:.1%}, "
            f"needs {MIN_AGREEMENT:.0%}; logit error {rel:.3f} of RMS, allowed "
            f"{MAX_RELATIVE_RMS}): calibrate on more or more representative batches "
            "(--calib-batches, --data)"
        )
    return out


def quantize_checked(
    fp32_path: str | Path,
    out_path: str | Path,
    train: Iterable,
    test: Iterable | None = None,
    calib_batches: int = 8,
    batch: int = 32,
    quantizer: str = "auto",
    runtime: str = "onnxruntime",
) -> QuantizeResult:
    """Calibrate on ``train`` (samples or (x, label) pairs), quantize, then compare with the
    fp32 model on ``test`` (pairs: accuracies too) or, without it, on the calibration inputs.
    The INT8 file is removed again when the check fails."""
    _, shape = input_shape(fp32_path)
    calib = calibration_arrays(train, shape, batch, calib_batches)
    used = quantize(fp32_path, out_path, calib, quantizer, runtime)
    xs, labels = calib, None
    if test is not None:
        pairs = [(np.asarray(x, dtype=np.float32), int(y)) for x, y in test]
        xs, labels = [np.stack([x for x, _ in pairs])], np.array([y for _, y in pairs])
    try:
        check = compare(fp32_path, out_path, xs, labels, runtime)
    except UserError:
        Path(out_path).unlink(missing_ok=True)  # ours, just written: not a usable model
        raise
    return QuantizeResult(
        Path(out_path),
        used,
        sum(len(c) for c in calib),
        check["agreement"],
        check["relative_rms"],
        check.get("fp32_acc"),
        check.get("int8_acc"),
    )
