"""TensorRT engines from ONNX: build (FP32, FP16, INT8 with calibration data), save, time.

Written against TensorRT 10's Python API (named I/O tensors, ``execute_async_v3``).
Device buffers come from PyTorch's CUDA allocator, so timing an engine needs torch with
CUDA; building needs only ``tensorrt``. Without TensorRT every entry point raises a
UserError naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import UserError

INSTALL_HINT = (
    "TensorRT is not installed: `pip install qmixprune[tensorrt]` on an x86 machine with an "
    "NVIDIA GPU, or use JetPack's TensorRT on a Jetson"
)
PRECISIONS = ("fp32", "fp16", "int8")


def available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _trt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise UserError(INSTALL_HINT) from exc
    return trt


def calibration_batches(data: Iterable, batch: int, limit: int = 16) -> list[np.ndarray]:
    """Float32 input batches for INT8 calibration, drawn from a data set of (x, y) pairs."""
    out, current = [], []
    for x, _ in data:
        current.append(np.asarray(x, dtype=np.float32))
        if len(current) == batch:
            out.append(np.stack(current))
            current = []
            if len(out) >= limit:
                break
    if not out:
        raise UserError(f"INT8 calibration needs at least {batch} samples")
    return out


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str = "fp16",
    calibration: list[np.ndarray] | None = None,
    batch: tuple[int, int, int] = (1, 8, 32),
    workspace_gb: float = 1.0,
) -> Path:
    """Parse ``onnx_path``, build an engine with a min/opt/max ``batch`` profile, save it."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and not calibration:
        raise UserError("INT8 needs calibration batches (see calibration_batches)")
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    if shape[0] == -1:
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, *[(b, *shape[1:]) for b in batch])
        config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, calibration, Path(engine_path))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT could not build an engine from {onnx_path} ({precision})")
    engine_path = Path(engine_path)
    tmp = engine_path.with_name(f".{engine_path.name}.tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    return engine_path


def _calibrator(trt, batches: list[np.ndarray], engine_path: Path):
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.batches = iter(batches)
            self.size = batches[0].shape[0]
            self.device = None
            self.cache = engine_path.with_suffix(".calib")

        def get_batch_size(self) -> int:
            return self.size

        def get_batch(self, names):
            batch = next(self.batches, None)
            if batch is None:
                return None
            self.device = torch.from_numpy(batch).cuda()
            return [self.device.data_ptr()]

        def read_calibration_cache(self):
            return self.cache.read_bytes() if self.cache.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            self.cache.write_bytes(bytes(cache))

    return Calibrator()


def time_engine(engine_path: str | Path, batch: int = 1, runs: int = 200, warmup: int = 20) -> dict:
    """p50/p90/p99 latency (ms) and throughput of a saved engine at one batch size."""
    trt = _trt()
    import torch

    if not torch.cuda.is_available():
        raise UserError("timing a TensorRT engine needs a CUDA GPU visible to PyTorch")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise UserError(f"{engine_path} is not an engine for this TensorRT and GPU")
    context = engine.create_execution_context()
    buffers = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = list(engine.get_tensor_shape(name))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            shape[0] = batch if shape[0] == -1 else shape[0]
            context.set_input_shape(name, shape)
        else:
            shape = list(context.get_tensor_shape(name))
        dtype = (
            torch.float16 if engine.get_tensor_dtype(name) == trt.DataType.HALF else torch.float32
        )
        buf = torch.randn(shape, dtype=dtype, device="cuda")
        context.set_tensor_address(name, buf.data_ptr())
        buffers.append(buf)
    stream = torch.cuda.Stream()
    for _ in range(warmup):
        context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        context.execute_async_v3(stream.cuda_stream)
        end.record(stream)
        end.synchronize()
        times.append(start.elapsed_time(end))
    ms = np.array(times)
    return {
        "batch": batch,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput": float(batch * 1e3 / np.median(ms)),
    }
