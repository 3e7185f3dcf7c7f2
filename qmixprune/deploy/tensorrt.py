"""TensorRT engines from ONNX: build and time, through ``trtexec`` when it is on PATH.

An engine is always built from an ONNX model with a free batch axis, with one optimisation
profile (min/opt/max batch); timing runs a batch inside that profile and reports the batch it
ran. Precision follows the ONNX model where the TensorRT has strongly typed networks (10.x
opt-in, 11.x always): INT8 is explicit quantization from the Q/DQ model of
``qmixprune export --int8`` (the implicit INT8 calibrator is deprecated since 10.1 and gone in
11); FP16 is a float16 ONNX (``export --fp16``), or the FP16 builder flag on versions that
still have it. Engines are rebuilt only when the ONNX file's content or the settings change
(a ``.json`` sidecar holds the key and the profile).

Tools, in order: ``trtexec`` (JetPack and the TensorRT packages ship it; its figures are
parsed), else TensorRT's Python API for building and our own loop for timing, with device
buffers from polygraphy's CUDA wrapper, never torch. Written against the documented TensorRT
10/11 APIs and trtexec's output format; not run here (no GPU): the tests cover argument
handling, ONNX preparation and parsing of a synthetic trtexec log.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_path, write_bytes
from .onnx_input import single_input

INSTALL_HINT = (
    "TensorRT is not installed: `pip install qmixprune[tensorrt]` on an x86 machine with an "
    "NVIDIA GPU, or use JetPack's TensorRT on a Jetson"
)
PRECISIONS = ("fp32", "fp16", "int8")
MEASURES = {
    "trtexec": "GPU compute time (trtexec's, CUDA events), host-device copies excluded",
    "tensorrt": "wall time of execute_async_v3 + stream sync, host-device copies excluded",
}
TESTED_MAJORS = (10, 11)  # the [tensorrt] extra pins the same range
# JetPack installs trtexec here, off PATH; the tarball and deb packages of x86 put it on PATH
# or in /usr/src/tensorrt/bin too
TRTEXEC_DIRS = ("/usr/src/tensorrt/bin", "/usr/local/tensorrt/bin", "/opt/tensorrt/bin")
# where libcudart lives when not on the loader's path: the toolkit (x86 and JetPack's
# aarch64 targets), JetPack's system libraries
CUDART_DIRS = (
    "/usr/local/cuda/lib64",
    "/usr/local/cuda/targets/x86_64-linux/lib",
    "/usr/local/cuda/targets/aarch64-linux/lib",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu/tegra",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/local/cuda-*/lib64",
)


def available() -> bool:
    """TensorRT's Python package or trtexec is here."""
    return _trtexec() is not None or _import_trt() is not None


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return trt


def _trt():
    trt = _import_trt()
    if trt is None:
        raise UserError(INSTALL_HINT)
    major = int(str(trt.__version__).split(".")[0])
    if major not in TESTED_MAJORS:
        warnings.warn(
            f"TensorRT {trt.__version__} is outside the tested majors {TESTED_MAJORS}",
            stacklevel=2,
        )
    return trt


def _trtexec() -> str | None:
    """trtexec on PATH, else in the places JetPack and the TensorRT packages put it."""
    found = shutil.which("trtexec")
    if found:
        return found
    for d in TRTEXEC_DIRS:
        path = Path(d, "trtexec")
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def cudart_dirs(site_dirs: list[str] | None = None, env: dict | None = None) -> list[str]:
    """Folders that may hold libcudart, in the order they are searched: CUDA_HOME's, pip's
    ``nvidia`` packages (``nvidia/cuda_runtime/lib`` for CUDA 12, ``nvidia/cu13/lib`` for 13),
    then the toolkit's and JetPack's fixed places."""
    env = os.environ if env is None else env
    site_dirs = sys.path if site_dirs is None else site_dirs
    dirs = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            dirs += [f"{env[var]}/lib64", f"{env[var]}/lib"]
    dirs += [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    for site in site_dirs:
        dirs += sorted(glob.glob(f"{site}/nvidia/*/lib"))
    for d in CUDART_DIRS:
        dirs += sorted(glob.glob(d)) if "*" in d else [d]
    return list(dict.fromkeys(dirs))


def find_cudart(site_dirs: list[str] | None = None, env: dict | None = None) -> Path:
    """libcudart's path, or a UserError naming every folder looked in."""
    dirs = cudart_dirs(site_dirs, env)
    for d in dirs:
        hits = sorted(glob.glob(f"{d}/libcudart.so*"))
        if hits:
            return Path(hits[0])
    raise UserError(
        "timing an engine without trtexec needs libcudart (the CUDA runtime), not found; "
        f"looked in {', '.join(dirs)}: install the CUDA toolkit or `pip install "
        "nvidia-cuda-runtime-cu12`, or put trtexec on PATH"
    )


def _preload_cudart() -> None:
    """Make libcudart findable by polygraphy's CUDA wrapper, which looks only on a few fixed
    paths and the loader's: load it globally by its full path and put its folder first on
    LD_LIBRARY_PATH (read by the wrapper's own search)."""
    import ctypes
    import ctypes.util

    try:
        path = find_cudart()
    except UserError:
        name = ctypes.util.find_library("cudart")  # the loader's cache may still know it
        if name is None:
            raise
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        return
    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    old = os.environ.get("LD_LIBRARY_PATH", "")
    if str(path.parent) not in old.split(os.pathsep):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(path.parent), old) if p)


def target(run=subprocess.run, trtexec: str | None = None) -> dict:
    """What an engine is built for and only runs on: TensorRT's version, the GPU's name and
    compute capability (an engine from another GPU or TensorRT fails to load, or runs tactics
    picked for another chip). Unknown parts are "?"."""
    version = "?"
    trt = _import_trt()
    if trt is not None:
        version = str(trt.__version__)
    elif trtexec:
        try:
            res = run([trtexec, "--help"], capture_output=True, text=True)
            m = re.search(r"TensorRT v(\d+)", (res.stdout or "") + (res.stderr or ""))
            if m:  # v100300 is 10.3.0; v8601 (8.x) is 8.6.1
                v = m.group(1)
                major, rest = (v[:-4], v[-4:]) if len(v) > 4 else (v[0], v[1:].rjust(4, "0"))
                version = f"{int(major)}.{int(rest[:2])}.{int(rest[2:])}"
        except (OSError, subprocess.SubprocessError):
            pass
    gpu, capability = "?", "?"
    try:
        q = ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", "0"]
        res = run(q, capture_output=True, text=True, timeout=10)
        line = (res.stdout or "").strip().splitlines()
        if res.returncode == 0 and line and "," in line[0]:
            gpu, capability = (v.strip() for v in line[0].rsplit(",", 1))
    except (OSError, subprocess.SubprocessError):
        pass
    if gpu == "?" and "torch" in sys.modules:  # Jetson has no nvidia-smi; torch may know
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name()
            capability = ".".join(map(str, torch.cuda.get_device_capability()))
    return {"tensorrt": version, "gpu": gpu, "capability": capability}


def run_trtexec(run, argv: list[str], what: str) -> subprocess.CompletedProcess:
    """Run trtexec, refusing a failed run with its exit code and its error lines (trtexec
    prints them on stderr, and its summary on stdout)."""
    res = run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        text = (res.stderr or "") + "\n" + (res.stdout or "")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "[E]" in ln] or lines[-3:]
        raise UserError(
            f"trtexec could not {what} (exit code {res.returncode}): "
            + (" | ".join(errors[-3:]) or "no output")
        )
    return res


@dataclass(frozen=True)
class BatchProfile:
    """The engine's optimisation profile over the batch axis."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise UserError(
                f"a batch profile needs 1 <= min <= opt <= max, got {self.min},{self.opt},"
                f"{self.max}"
            )

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        try:
            low, opt, high = (int(v) for v in text.split(","))
        except ValueError:
            raise UserError(f"a batch profile is MIN,OPT,MAX (e.g. 1,8,32), got {text!r}") from None
        return cls(low, opt, high)

    def check(self, batch: int) -> None:
        if not self.min <= batch <= self.max:
            raise UserError(
                f"batch {batch} is outside the engine's profile ({self.min}..{self.max}): "
                "time a batch inside it, or rebuild with --trt-batch MIN,OPT,MAX"
            )


@dataclass(frozen=True)
class OnnxInput:
    """What the build needs to know of the ONNX model."""

    name: str
    shape: tuple  # the batch axis first (a name), then fixed sizes
    quantized: bool  # has Q/DQ nodes: explicit INT8 quantization
    fp16: bool  # float16 input: a float16 model


def inspect_onnx(path: str | Path) -> OnnxInput:
    """The model's single input, checked: a free batch axis and fixed other dimensions."""
    import onnx

    proto, inp = single_input(path, "engines are built for models with one input")
    tt = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    if not dims or isinstance(dims[0], int):
        raise UserError(
            f"{path} has a fixed batch of {dims[0] if dims else '?'}: TensorRT engines are built "
            "from a free batch axis (export without --fixed-batch)"
        )
    if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise UserError(f"{path}'s input {dims} has free dimensions other than the batch")
    ops = {n.op_type for n in proto.graph.node}
    return OnnxInput(
        inp.name,
        tuple(dims),
        bool(ops & {"QuantizeLinear", "DequantizeLinear"}),
        tt.elem_type == onnx.TensorProto.FLOAT16,
    )


def build_settings(info: OnnxInput, precision: str, has_fp16_flag: bool) -> dict:
    """How to build ``precision`` from this ONNX: a strongly typed network (types from the
    model) or builder flags, on a TensorRT with (``has_fp16_flag``) or without them."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8":
        if not info.quantized:
            raise UserError(
                "TensorRT INT8 is explicit quantization: build from the Q/DQ model that "
                "`qmixprune export --int8` writes"
            )
        return {"strongly_typed": True, "flags": []}
    if info.quantized:
        raise UserError("a Q/DQ (INT8) model builds an INT8 engine: use --tensorrt int8")
    if precision == "fp16" and not info.fp16:
        if not has_fp16_flag:
            raise UserError(
                "this TensorRT has no FP16 builder flag (strongly typed networks only): "
                "export a float16 model (--fp16) and build that"
            )
        return {"strongly_typed": False, "flags": ["FP16"]}
    if precision == "fp32" and info.fp16:
        raise UserError("a float16 model builds an FP16 engine: use --tensorrt fp16")
    return {"strongly_typed": True, "flags": []}


def content_key(
    onnx_path: str | Path,
    precision: str,
    profile: BatchProfile,
    tool: str,
    where: dict | None = None,
) -> str:
    """Hash of the model's bytes, the build settings and the ``target`` (TensorRT version,
    GPU, compute capability): what an engine is reused for."""
    h = hashlib.sha256(Path(onnx_path).read_bytes())
    settings = [precision, [profile.min, profile.opt, profile.max], tool, where or {}]
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def _shape(info: OnnxInput, batch: int) -> str:
    return "x".join(str(d) for d in (batch, *info.shape[1:]))


def trtexec_build_args(
    onnx_path: str | Path,
    engine_path: str | Path,
    info: OnnxInput,
    profile: BatchProfile,
    settings: dict,
    workspace_mb: int = 1024,
) -> list[str]:
    """trtexec's command line for building (and saving) the engine."""
    args = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        f"--minShapes={info.name}:{_shape(info, profile.min)}",
        f"--optShapes={info.name}:{_shape(info, profile.opt)}",
        f"--maxShapes={info.name}:{_shape(info, profile.max)}",
        f"--memPoolSize=workspace:{workspace_mb}M",
        "--skipInference",
    ]
    if settings["strongly_typed"]:
        args.append("--stronglyTyped")
    args += [f"--{flag.lower()}" for flag in settings["flags"]]
    return args


def trtexec_time_args(
    engine_path: str | Path, name: str, shape: tuple, batch: int, runs: int, warmup_ms: int
) -> list[str]:
    """trtexec's command line for timing ``runs`` inferences of a batch of ``batch``."""
    dims = "x".join(str(d) for d in (batch, *shape[1:]))
    return [
        "trtexec",
        f"--loadEngine={engine_path}",
        f"--shapes={name}:{dims}",
        f"--iterations={runs}",
        f"--warmUp={warmup_ms}",
        "--duration=0",  # stop after the iterations, not after a time
        "--noDataTransfers",  # GPU time of the network, as for ONNX Runtime on its device
    ]


_STAT = r"min = ([\d.]+) ms, max = ([\d.]+) ms, mean = ([\d.]+) ms, median = ([\d.]+) ms"
_PCT = r"percentile\((\d+)%\) = ([\d.]+) ms"


def parse_trtexec(log: str) -> dict:
    """trtexec's performance summary: throughput (queries/s), the inference shape it ran, and
    min/max/mean/median/percentiles (ms) of Latency and GPU Compute Time."""
    out: dict = {}
    shape = re.search(r"Input inference shapes?\s*:\s*([^=\s]+)=([\dx]+)", log)
    if shape:
        out["input"] = shape.group(1)
        out["shape"] = [int(d) for d in shape.group(2).split("x")]
    qps = re.search(r"Throughput:\s*([\d.]+)\s*qps", log)
    for key, label in (("latency", "Latency"), ("gpu_compute", "GPU Compute Time")):
        m = re.search(rf"\]\s*{label}: {_STAT}((?:, {_PCT})*)", log)
        if m:
            stat = dict(zip(("min", "max", "mean", "median"), map(float, m.groups()[:4])))
            stat.update({f"p{p}": float(v) for p, v in re.findall(_PCT, m.group(5))})
            out[key] = stat
    if qps is None or "gpu_compute" not in out or "shape" not in out:
        errors = [ln.split("]", 2)[-1].strip() for ln in log.splitlines() if "[E]" in ln]
        raise UserError(
            "trtexec printed no performance summary"
            + (f": {errors[-1]}" if errors else " (run it by hand to see why)")
        )
    out["throughput_qps"] = float(qps.group(1))
    return out


def stats_from_trtexec(parsed: dict, batch: int) -> dict:
    """A bench row from trtexec's figures; refuses figures for another batch than asked."""
    ran = parsed["shape"][0]
    if ran != batch:
        raise UserError(f"trtexec ran batch {ran}, not the {batch} asked for")
    gpu = parsed["gpu_compute"]
    return {
        "batch": ran,
        "p50_ms": gpu["median"],
        "p90_ms": gpu.get("p90", gpu["max"]),
        "p99_ms": gpu.get("p99", gpu["max"]),
        "throughput": ran * 1e3 / gpu["median"],
        "tool": "trtexec",
        "measures": MEASURES["trtexec"],
    }


def _sidecar(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str = "fp16",
    profile: BatchProfile | None = None,
    workspace_gb: float = 1.0,
    run=subprocess.run,
) -> Path:
    """Build an engine for ``precision`` from ``onnx_path`` with a batch ``profile`` (default
    1/8/32) and save it with its sidecar; an engine already built from the same content and
    settings is kept. ``run`` runs trtexec (injectable for tests)."""
    profile = profile or BatchProfile()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    trtexec = _trtexec()
    trt = None if trtexec else _trt()
    info = inspect_onnx(onnx_path)
    if trtexec:  # trtexec of 11.x dropped --fp16 with the builder flag
        usage = run([trtexec, "--help"], capture_output=True, text=True)
        has_fp16 = "--fp16" in (usage.stdout or "") + (usage.stderr or "")
    else:
        has_fp16 = hasattr(trt.BuilderFlag, "FP16")
    settings = build_settings(info, precision, has_fp16)
    tool = "trtexec" if trtexec else f"tensorrt-{trt.__version__}"
    where = target(run, trtexec)
    key = content_key(onnx_path, precision, profile, tool, where)
    meta_path = _sidecar(engine_path)
    if engine_path.is_file() and meta_path.is_file():
        try:
            if json.loads(meta_path.read_text()).get("key") == key:
                return engine_path  # built from this very model with these settings
        except (OSError, ValueError):
            pass
    with atomic_path(engine_path) as tmp:
        if trtexec:
            args = trtexec_build_args(
                onnx_path, tmp, info, profile, settings, int(workspace_gb * 1024)
            )
            run_trtexec(run, [trtexec, *args[1:]], f"build an engine from {onnx_path}")
        else:
            tmp.write_bytes(_build_python(trt, onnx_path, info, profile, settings, workspace_gb))
    meta = {
        "key": key,
        "onnx": str(onnx_path),
        "precision": precision,
        "profile": [profile.min, profile.opt, profile.max],
        "input": info.name,
        "shape": list(info.shape),
        "strongly_typed": settings["strongly_typed"],
        "tool": tool,
        "target": where,
    }
    write_bytes(meta_path, json.dumps(meta, indent=1).encode())
    return engine_path


def _build_python(trt, onnx_path, info, profile, settings, workspace_gb) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if settings["strongly_typed"]:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)  # explicit batch: the only mode since 10.0
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt = builder.create_optimization_profile()
    opt.set_shape(
        info.name, *[(b, *info.shape[1:]) for b in (profile.min, profile.opt, profile.max)]
    )
    config.add_optimization_profile(opt)
    for flag in settings["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT could not build an engine from {onnx_path}")
    return bytes(serialized)


def engine_meta(engine_path: str | Path) -> dict | None:
    try:
        return json.loads(_sidecar(Path(engine_path)).read_text())
    except (OSError, ValueError):
        return None


def time_engine(
    engine_path: str | Path,
    batch: int = 1,
    runs: int = 200,
    warmup: int = 20,
    run=subprocess.run,
    clock=time.perf_counter,
) -> dict:
    """p50/p90/p99 latency (ms) and throughput of a saved engine at ``batch``, which must lie
    in the engine's profile; the row gives the batch that was run and what its figures
    measure (``measures``: trtexec's GPU compute time, or our loop's wall time, which
    ``clock`` reads)."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise UserError(f"engine {engine_path} does not exist")
    meta = engine_meta(engine_path)
    if meta:
        BatchProfile(*meta["profile"]).check(batch)
    trtexec = _trtexec()
    if trtexec and meta:
        # trtexec warms up for a time, not a count: about ``warmup`` runs of 10 ms
        args = trtexec_time_args(
            engine_path, meta["input"], meta["shape"], batch, runs, max(10 * warmup, 200)
        )
        res = run_trtexec(run, [trtexec, *args[1:]], f"time {engine_path}")
        return stats_from_trtexec(parse_trtexec(res.stdout), batch)
    return _time_python(engine_path, batch, runs, warmup, clock)


def _time_python(engine_path: Path, batch: int, runs: int, warmup: int, clock) -> dict:
    trt = _trt()
    _preload_cudart()
    try:
        from polygraphy import cuda
        from polygraphy.datatype import DataType
    except ImportError as exc:
        raise UserError(
            "timing an engine without trtexec needs polygraphy's CUDA wrapper: "
            "pip install polygraphy (or put trtexec on PATH)"
        ) from exc
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise UserError(f"{engine_path} is not an engine for this TensorRT and GPU")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    stream, buffers = cuda.Stream(), []
    ran = None
    for name in inputs:
        shape = list(engine.get_tensor_shape(name))
        if shape[0] == -1:
            low, _, high = engine.get_tensor_profile_shape(name, 0)
            BatchProfile(low[0], low[0], high[0]).check(batch)
            shape[0] = batch
        if not context.set_input_shape(name, shape):
            raise UserError(f"TensorRT refused input shape {shape} for {name}")
        ran = shape[0]
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        host = np.random.default_rng(0).standard_normal(shape).astype(dtype)
        buf = cuda.DeviceArray(shape=tuple(shape), dtype=DataType.from_dtype(dtype))
        buf.copy_from(host, stream)
        buffers.append(buf)
        context.set_tensor_address(name, buf.ptr)
    for name in names:
        if name in inputs:
            continue
        shape = tuple(context.get_tensor_shape(name))
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        buf = cuda.DeviceArray(shape=shape, dtype=DataType.from_dtype(dtype))
        buffers.append(buf)
        context.set_tensor_address(name, buf.ptr)
    for _ in range(warmup):
        context.execute_async_v3(stream.ptr)
    stream.synchronize()
    times = np.empty(runs)
    for i in range(runs):
        t0 = clock()
        if not context.execute_async_v3(stream.ptr):
            raise UserError(f"TensorRT failed to run {engine_path}")
        stream.synchronize()
        times[i] = clock() - t0
    for buf in buffers:
        buf.free()
    stream.free()
    ms = times * 1e3
    return {
        "batch": ran,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput": float(ran * 1e3 / np.median(ms)),
        "tool": "tensorrt",
        "measures": MEASURES["tensorrt"],
    }
