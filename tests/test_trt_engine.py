"""TensorRT support up to the point that needs a GPU: argument handling, ONNX preparation,
trtexec command lines and the parsing of its output (tests/data/trtexec_int8_b32.log is a
synthetic log written from trtexec's documented summary format, not a recorded run)."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from qmixprune.cli import main
from qmixprune.deploy import tensorrt
from qmixprune.deploy.export import export_onnx
from qmixprune.deploy.tensorrt import (
    BatchProfile,
    OnnxInput,
    build_settings,
    inspect_onnx,
    parse_trtexec,
    stats_from_trtexec,
    trtexec_build_args,
)
from qmixprune.errors import UserError
from qmixprune.models import create

LOG = Path(__file__).parent / "data" / "trtexec_int8_b32.log"
X = torch.zeros(1, 3, 32, 32)
FP32 = OnnxInput("input", ("batch", 3, 32, 32), quantized=False, fp16=False)
QDQ = OnnxInput("input", ("batch", 3, 32, 32), quantized=True, fp16=False)
HALF = OnnxInput("input", ("batch", 3, 32, 32), quantized=False, fp16=True)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt")
    m = create("alexnet", width=0.125).eval()
    export_onnx(m, d / "dyn.onnx", X)
    export_onnx(m, d / "fixed.onnx", X, dynamic_batch=False)
    export_onnx(m, d / "half.onnx", X, fp16=True)
    return d


def test_inspect_onnx_needs_a_free_batch_axis(onnx_files):
    assert inspect_onnx(onnx_files / "dyn.onnx") == FP32
    assert inspect_onnx(onnx_files / "half.onnx").fp16
    with pytest.raises(UserError, match="fixed batch of 1.*without --fixed-batch"):
        inspect_onnx(onnx_files / "fixed.onnx")


@pytest.mark.parametrize(
    "info, precision, has_flag, want",
    [
        (QDQ, "int8", True, {"strongly_typed": True, "flags": []}),
        (QDQ, "int8", False, {"strongly_typed": True, "flags": []}),
        (FP32, "int8", True, "explicit quantization"),
        (QDQ, "fp16", True, "builds an INT8 engine"),
        (FP32, "fp16", True, {"strongly_typed": False, "flags": ["FP16"]}),
        (FP32, "fp16", False, "no FP16 builder flag"),
        (HALF, "fp16", False, {"strongly_typed": True, "flags": []}),
        (HALF, "fp32", True, "builds an FP16 engine"),
        (FP32, "fp32", False, {"strongly_typed": True, "flags": []}),
        (FP32, "bf16", True, "precision must be one of"),
    ],
)
def test_build_settings_follow_the_model_and_the_version(info, precision, has_flag, want):
    if isinstance(want, str):
        with pytest.raises(UserError, match=want):
            build_settings(info, precision, has_flag)
    else:
        assert build_settings(info, precision, has_flag) == want


def test_batch_profile():
    assert BatchProfile.parse("1,8,32") == BatchProfile(1, 8, 32)
    for bad in ("8,1,32", "0,1,2", "1,8", "a,b,c"):
        with pytest.raises(UserError, match="MIN,OPT,MAX|min <= opt <= max"):
            BatchProfile.parse(bad)
    BatchProfile(1, 8, 32).check(32)
    with pytest.raises(UserError, match="batch 64 is outside the engine's profile"):
        BatchProfile(1, 8, 32).check(64)


def test_trtexec_build_command():
    args = trtexec_build_args(
        "m.onnx", "m.engine", QDQ, BatchProfile(1, 4, 16), build_settings(QDQ, "int8", True)
    )
    assert args[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine"]
    assert "--minShapes=input:1x3x32x32" in args and "--maxShapes=input:16x3x32x32" in args
    assert "--optShapes=input:4x3x32x32" in args and "--stronglyTyped" in args
    assert not any(a in args for a in ("--int8", "--fp16"))  # precision comes from Q/DQ
    weak = trtexec_build_args(
        "m.onnx", "e", FP32, BatchProfile(), {"strongly_typed": False, "flags": ["FP16"]}
    )
    assert "--fp16" in weak and "--stronglyTyped" not in weak


def test_parse_trtexec_log():
    parsed = parse_trtexec(LOG.read_text())
    assert parsed["shape"] == [32, 3, 32, 32] and parsed["throughput_qps"] == 2038.74
    assert parsed["gpu_compute"]["median"] == 0.4855 and parsed["gpu_compute"]["p99"] == 0.5872
    assert parsed["latency"]["p90"] == 0.4998 and parsed["latency"]["min"] == 0.4712
    row = stats_from_trtexec(parsed, 32)
    assert row["batch"] == 32 and row["throughput"] == pytest.approx(32e3 / 0.4855)
    with pytest.raises(UserError, match="ran batch 32, not the 1"):
        stats_from_trtexec(parsed, 1)
    failed = "[11/30/2026-11:00:00] [E] Error[4]: input: the shape is out of range\n&&&& FAILED"
    with pytest.raises(UserError, match="no performance summary: Error\\[4\\]"):
        parse_trtexec(failed)


class FakeTrtexec:
    """Stands in for subprocess.run with trtexec: builds write the engine file."""

    def __init__(self):
        self.calls = []

    def __call__(self, argv, **kw):
        self.calls.append(argv)
        if "--help" in argv:
            return subprocess.CompletedProcess(argv, 0, "  --fp16  Enable fp16\n", "")
        for a in argv:
            if a.startswith("--saveEngine="):
                Path(a.split("=", 1)[1]).write_bytes(b"engine")
        out = ""
        shapes = [a.split(":", 1)[1] for a in argv if a.startswith("--shapes=")]
        if shapes:  # a timing run: the log of the shape asked for
            out = LOG.read_text().replace("32x3x32x32", shapes[0])
        return subprocess.CompletedProcess(argv, 0, out, "")


def test_build_and_time_through_trtexec(onnx_files, tmp_path, monkeypatch):
    monkeypatch.setattr(tensorrt, "_trtexec", lambda: "/opt/trt/bin/trtexec")
    fake = FakeTrtexec()
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes((onnx_files / "dyn.onnx").read_bytes())
    engine = tensorrt.build_engine(onnx, tmp_path / "m.engine", "fp32", run=fake)
    meta = json.loads((tmp_path / "m.engine.json").read_text())
    assert engine.read_bytes() == b"engine" and meta["profile"] == [1, 8, 32]
    assert meta["input"] == "input" and meta["strongly_typed"]
    builds = [c for c in fake.calls if any(a.startswith("--saveEngine") for a in c)]
    assert len(builds) == 1 and builds[0][0] == "/opt/trt/bin/trtexec"
    # same content and settings: kept; another model under the same name: rebuilt
    tensorrt.build_engine(onnx, engine, "fp32", run=fake)
    assert len([c for c in fake.calls if "--onnx=" + str(onnx) in c]) == 1
    export_onnx(create("alexnet", width=0.25).eval(), onnx, X)
    tensorrt.build_engine(onnx, engine, "fp32", run=fake)
    assert len([c for c in fake.calls if "--onnx=" + str(onnx) in c]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json", "m.onnx"]
    row = tensorrt.time_engine(engine, batch=32, runs=200, run=fake)
    assert row["batch"] == 32 and row["tool"] == "trtexec" and row["p50_ms"] == 0.4855
    assert row["measures"].startswith("GPU compute time")  # issue 24 (10): labelled
    assert "--shapes=input:32x3x32x32" in fake.calls[-1]
    n = len(fake.calls)
    with pytest.raises(UserError, match="outside the engine's profile"):
        tensorrt.time_engine(engine, batch=64, run=fake)
    assert len(fake.calls) == n  # refused before running anything


def test_export_tensorrt_arguments_are_checked_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tensorrt, "_trtexec", lambda: "/opt/trt/bin/trtexec")
    out = tmp_path / "m.onnx"
    base = ["export", "alexnet", "--width", "0.125", "-o", str(out), "--tensorrt", "fp32"]
    assert main([*base, "--fixed-batch", "1"]) == 2
    assert "free batch axis" in capsys.readouterr().err
    assert main([*base, "--trt-batch", "8,1,32"]) == 2
    assert "min <= opt <= max" in capsys.readouterr().err
    assert not out.exists()


def test_profile_on_tensorrt_engines(tmp_path, capsys, monkeypatch):
    import numpy as np

    from qmixprune.deploy.profile import engine_timer

    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)
    out = tmp_path / "t.json"
    argv = ["profile", "alexnet", "--width", "0.125", "--provider", "tensorrt", "-o", str(out)]
    assert main(argv) == 2 and "TensorRT is not installed" in capsys.readouterr().err
    monkeypatch.setattr(tensorrt, "_trtexec", lambda: "/opt/trt/bin/trtexec")
    fake = FakeTrtexec()
    timer = engine_timer("fp16", runs=5, run=fake)
    (ms,) = timer([torch.nn.Conv2d(4, 8, 3, padding=1)], (2, 4, 8, 8))
    assert np.allclose(ms, [0.4855])  # trtexec's GPU compute median, parsed
    build = next(c for c in fake.calls if any(a.startswith("--saveEngine") for a in c))
    assert "--stronglyTyped" in build and "--maxShapes=input:2x4x8x8" in build  # fp16 model
    assert "--shapes=input:2x4x8x8" in fake.calls[-1]


def fake_tensorrt(accept_shape=True):
    """Just enough of TensorRT's runtime API (10.x names) to drive the timing loop."""
    import types

    import numpy as np

    class Engine:
        num_io_tensors = 2
        names = ["input", "output"]

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return "in" if name == "input" else "out"

        def get_tensor_shape(self, name):
            return [-1, 3, 32, 32] if name == "input" else [-1, 10]

        def get_tensor_profile_shape(self, name, index):
            return [1, 3, 32, 32], [8, 3, 32, 32], [32, 3, 32, 32]

        def get_tensor_dtype(self, name):
            return "float"

        def create_execution_context(self):
            return Context()

    class Context:
        shapes = {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = shape
            return accept_shape

        def get_tensor_shape(self, name):
            return [self.shapes["input"][0], 10]

        def set_tensor_address(self, name, ptr):
            pass

        def execute_async_v3(self, stream):
            return True

    trt = types.SimpleNamespace(
        __version__="10.3.0",
        Logger=type("Logger", (), {"WARNING": 0, "__init__": lambda self, level=0: None}),
        Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda b: Engine()),
        TensorIOMode=types.SimpleNamespace(INPUT="in"),
        nptype=lambda t: np.float32,
    )
    cuda = types.ModuleType("polygraphy.cuda")
    cuda.Stream = type(
        "Stream", (), {"ptr": 1, "synchronize": lambda s: None, "free": lambda s: None}
    )

    class DeviceArray:
        def __init__(self, shape, dtype):
            self.shape, self.ptr = shape, 2

        def copy_from(self, host, stream=None):
            assert host.shape == self.shape

        def free(self):
            pass

    cuda.DeviceArray = DeviceArray
    datatype = types.ModuleType("polygraphy.datatype")
    datatype.DataType = types.SimpleNamespace(from_dtype=lambda d: d)
    poly = types.ModuleType("polygraphy")
    poly.cuda, poly.datatype = cuda, datatype
    return trt, {"polygraphy": poly, "polygraphy.cuda": cuda, "polygraphy.datatype": datatype}


@pytest.mark.parametrize("accept", [True, False])
def test_runtime_timing_loop_checks_shapes_and_reports_the_batch_run(tmp_path, monkeypatch, accept):
    import sys

    trt, modules = fake_tensorrt(accept)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for name, mod in modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(tensorrt, "_trtexec", lambda: None)
    monkeypatch.setattr(tensorrt, "_preload_cudart", lambda: None)  # no libcudart in CI
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")  # no sidecar: the engine's own profile is read
    if not accept:
        with pytest.raises(UserError, match="refused input shape"):
            tensorrt.time_engine(engine, batch=4, runs=3, warmup=1)
        return
    ticks = iter(range(100))
    row = tensorrt.time_engine(engine, batch=4, runs=3, warmup=1, clock=lambda: next(ticks) / 1e3)
    assert row["batch"] == 4 and row["tool"] == "tensorrt"
    assert row["p50_ms"] == 1.0 and row["throughput"] == 4e3  # the injected clock's 1 ms
    assert "copies excluded" in row["measures"] and "sync" in row["measures"]
    with pytest.raises(UserError, match="batch 64 is outside the engine's profile \\(1..32\\)"):
        tensorrt.time_engine(engine, batch=64, runs=3)


def test_export_tensorrt_int8_quantizes_for_tensorrt(tmp_path, capsys, monkeypatch):
    import numpy as np
    import onnx

    monkeypatch.setattr(tensorrt, "_trtexec", lambda: "/opt/trt/bin/trtexec")
    built = []

    def build(onnx_path, engine_path, precision, profile):
        built.append((Path(onnx_path), precision))
        return engine_path

    monkeypatch.setattr(tensorrt, "build_engine", build)
    out = tmp_path / "m.int8.onnx"
    argv = ["export", "alexnet", "--width", "0.25", "-o", str(out), "--tensorrt", "int8"]
    assert main([*argv, "--calib-batches", "1", "--quantizer", "onnxruntime"]) == 0
    assert built == [(out, "int8")]
    proto = onnx.load(str(out))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    zero = [inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert zero and all(z.dtype == np.int8 and not z.any() for z in zero)  # what TRT reads


def test_profile_engines_export_a_copy_not_the_users_model(monkeypatch):
    """Issue 24 (1): exporting ``m.eval().cpu()`` moved the user's own model (the first in the
    list) off its device and out of its mode; the next forward fed it a CUDA input."""
    from qmixprune.deploy.profile import engine_timer

    monkeypatch.setattr(tensorrt, "_trtexec", lambda: "/opt/trt/bin/trtexec")
    monkeypatch.setattr(tensorrt, "target", lambda run=None, trtexec=None: {"gpu": "fake"})
    model = torch.nn.Conv2d(4, 8, 3, padding=1).train()
    exported = []
    real_export = torch.onnx.export
    monkeypatch.setattr(
        torch.onnx, "export", lambda m, *a, **k: exported.append(m) or real_export(m, *a, **k)
    )
    engine_timer("fp32", runs=5, run=FakeTrtexec())([model], (2, 4, 8, 8))
    assert exported and exported[0] is not model
    assert model.training  # untouched


class Fail:
    """trtexec failing with its error on stderr (where trtexec prints [E] lines)."""

    def __init__(self, on: str, code: int = 1):
        self.on, self.code, self.inner = on, code, FakeTrtexec()

    def __call__(self, argv, **kw):
        assert kw.get("capture_output") or kw.get("stderr") is not None, "stderr not captured"
        if any(a.startswith(self.on) for a in argv):
            err = "[E] Error[1]: [cudaDriverApi] no CUDA-capable device is detected\n"
            return subprocess.CompletedProcess(argv, self.code, "&&&& FAILED\n", err)
        return self.inner(argv, **kw)


def test_trtexec_failures_name_stderr_and_exit_code(onnx_files, tmp_path, monkeypatch):
    """Issue 24 (8): stderr was never read and the timing run's exit code was ignored."""
    monkeypatch.setattr(tensorrt, "_trtexec", lambda: "/opt/trt/bin/trtexec")
    monkeypatch.setattr(tensorrt, "target", lambda run=None, trtexec=None: {"gpu": "fake"})
    onnx = onnx_files / "dyn.onnx"
    with pytest.raises(UserError, match="exit code 1.*no CUDA-capable device"):
        tensorrt.build_engine(onnx, tmp_path / "a.engine", "fp32", run=Fail("--saveEngine"))
    engine = tensorrt.build_engine(onnx, tmp_path / "b.engine", "fp32", run=FakeTrtexec())
    with pytest.raises(UserError, match="exit code 1.*no CUDA-capable device"):
        tensorrt.time_engine(engine, batch=1, runs=5, run=Fail("--loadEngine"))


def test_engine_cache_key_holds_tensorrt_gpu_and_capability(onnx_files, tmp_path, monkeypatch):
    """Issue 24 (7): an engine built on one GPU or TensorRT is not reused on another."""
    monkeypatch.setattr(tensorrt, "_trtexec", lambda: "/opt/trt/bin/trtexec")
    here = {"tensorrt": "10.3.0", "gpu": "NVIDIA A100", "capability": "8.0"}
    monkeypatch.setattr(tensorrt, "target", lambda run=None, trtexec=None: dict(here))
    fake = FakeTrtexec()
    onnx = onnx_files / "dyn.onnx"

    def builds():
        return len([c for c in fake.calls if any(a.startswith("--saveEngine") for a in c)])

    engine = tensorrt.build_engine(onnx, tmp_path / "m.engine", "fp32", run=fake)
    tensorrt.build_engine(onnx, engine, "fp32", run=fake)
    assert builds() == 1  # same target: kept
    for key, value in (("gpu", "NVIDIA H100"), ("capability", "9.0"), ("tensorrt", "10.8.0")):
        here[key] = value
        tensorrt.build_engine(onnx, engine, "fp32", run=fake)
    assert builds() == 4
    meta = json.loads((tmp_path / "m.engine.json").read_text())
    assert meta["target"] == here


def test_target_reads_trtexec_and_nvidia_smi():
    def fake(argv, **kw):
        if argv[0] == "nvidia-smi":
            return subprocess.CompletedProcess(argv, 0, "NVIDIA H100 80GB HBM3, 9.0\n", "")
        out = "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help\n"
        return subprocess.CompletedProcess(argv, 0, out, "")

    t = tensorrt.target(fake, trtexec="/opt/trt/bin/trtexec")
    assert t == {"tensorrt": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0"}


def test_trtexec_and_cudart_are_looked_for_where_jetson_and_pip_put_them(tmp_path, monkeypatch):
    """Issue 24 (9): JetPack's trtexec is in /usr/src/tensorrt/bin, off PATH; libcudart comes
    from pip's nvidia packages or JetPack's CUDA; the error names the places looked."""
    monkeypatch.setattr(tensorrt.shutil, "which", lambda name: None)
    jetson = tmp_path / "usr/src/tensorrt/bin"
    jetson.mkdir(parents=True)
    (jetson / "trtexec").write_text("")
    (jetson / "trtexec").chmod(0o755)
    monkeypatch.setattr(tensorrt, "TRTEXEC_DIRS", (str(jetson),))
    assert tensorrt._trtexec() == str(jetson / "trtexec")
    pip_lib = tmp_path / "site/nvidia/cuda_runtime/lib"
    pip_lib.mkdir(parents=True)
    assert "/usr/local/cuda/targets/aarch64-linux/lib" in tensorrt.CUDART_DIRS
    monkeypatch.setattr(tensorrt, "CUDART_DIRS", (str(tmp_path / "jetpack"),))
    dirs = tensorrt.cudart_dirs([str(tmp_path / "site")], env={})
    assert dirs == [str(pip_lib), str(tmp_path / "jetpack")]
    with pytest.raises(UserError, match="libcudart.*looked in.*nvidia/cuda_runtime/lib"):
        tensorrt.find_cudart([str(tmp_path / "site")], env={})
    (pip_lib / "libcudart.so.12").write_bytes(b"")
    assert tensorrt.find_cudart([str(tmp_path / "site")], env={}) == pip_lib / "libcudart.so.12"
