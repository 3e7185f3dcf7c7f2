import subprocess
import sys

import numpy as np
import pytest
import torch

from qmixprune.cli import main
from qmixprune.deploy.export import export_onnx
from qmixprune.deploy.quantize import (
    MIN_AGREEMENT,
    RUNTIMES,
    calibration_arrays,
    compare,
    input_shape,
    quantize,
    quantize_checked,
)
from qmixprune.errors import UserError
from qmixprune.models import create

X = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    d = tmp_path_factory.mktemp("q")
    torch.manual_seed(0)
    return export_onnx(create("alexnet", width=0.25).eval(), d / "a.onnx", X).path


def samples(n, shape=(3, 32, 32), seed=0):
    g = np.random.default_rng(seed)
    return [(g.standard_normal(shape).astype(np.float32), int(g.integers(10))) for _ in range(n)]


def test_int8_model_has_per_channel_qdq_and_matches_fp32(fp32, tmp_path):
    import onnx

    res = quantize_checked(fp32, tmp_path / "a.int8.onnx", samples(40), samples(30, seed=1), 2, 16)
    assert res.quantizer in ("onnxruntime", "modelopt") and res.calib_samples == 32
    assert res.agreement >= MIN_AGREEMENT and 0 <= res.relative_rms < 0.1
    assert res.fp32_acc is not None and res.int8_acc is not None
    proto = onnx.load(str(res.path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 5 and ops.count("DequantizeLinear") >= 10
    # per-channel weights: the first conv's weight scale has one entry per output channel
    inits = {i.name: i for i in proto.graph.initializer}
    scales = [
        inits[n.input[1]]
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0].startswith("features.0.weight")
    ]
    assert scales and list(scales[0].dims) == [16]  # alexnet width 0.25: 16 filters
    assert input_shape(res.path)[1][0] == "batch"  # still a free batch axis
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.int8.onnx"]  # no temp files


def test_activations_are_quantized_for_the_runtime(fp32, tmp_path):
    import onnx
    import onnxruntime as ort

    calib = calibration_arrays(samples(16), ["batch", 3, 32, 32], 8)
    zero_points, fused = {}, {}
    for runtime in RUNTIMES:
        out = tmp_path / f"{runtime}.onnx"
        assert quantize(fp32, out, calib, "onnxruntime", runtime) == "onnxruntime"
        proto = onnx.load(str(out))
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
        zero_points[runtime] = [
            inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"
        ]
        opts = ort.SessionOptions()  # the graph ONNX Runtime runs, after its fusions
        opts.optimized_model_filepath = str(tmp_path / f"{runtime}.optimized.onnx")
        ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
        fused[runtime] = ops.count("QuantizeLinear") + ops.count("DequantizeLinear")
    # ONNX Runtime: uint8 activations, every Q/DQ pair inside the net fused into integer
    # kernels; only the input's Q and the output's DQ remain
    assert all(z.dtype == np.uint8 for z in zero_points["onnxruntime"])
    assert fused["onnxruntime"] == 2
    # TensorRT's explicit quantization: int8 activations with zero point 0
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points["tensorrt"])
    with pytest.raises(UserError, match="runtime must be one of"):
        quantize(fp32, tmp_path / "x.onnx", calib, "onnxruntime", "openvino")


def test_calibration_must_match_the_model_input():
    with pytest.raises(UserError, match=r"shape \[1, 8, 8\] but the model takes \[3, 32, 32\]"):
        calibration_arrays(samples(4, (1, 8, 8)), ["batch", 3, 32, 32])
    with pytest.raises(UserError, match="at least 32"):
        calibration_arrays(samples(4), [32, 3, 32, 32])  # a fixed batch of 32
    got = calibration_arrays(samples(10), ["batch", 3, 32, 32], batch=4, batches=5)
    assert [b.shape[0] for b in got] == [4, 4, 2] and got[0].dtype == np.float32
    assert [b.shape[0] for b in calibration_arrays(samples(9), [4, 3, 32, 32], 8)] == [4, 4]


def test_a_model_that_disagrees_is_refused_and_removed(fp32, tmp_path):
    torch.manual_seed(1)
    other = export_onnx(create("alexnet", width=0.25).eval(), tmp_path / "b.onnx", X).path
    xs = [np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)]
    assert compare(fp32, fp32, xs)["agreement"] == 1.0
    with pytest.raises(UserError, match="disagrees with the fp32"):
        compare(fp32, other, xs)


def test_modelopt_missing_names_the_package(fp32, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelopt", None)
    calib = calibration_arrays(samples(8), ["batch", 3, 32, 32], 8)
    with pytest.raises(UserError, match="nvidia-modelopt"):
        quantize(fp32, tmp_path / "m.onnx", calib, "modelopt")
    assert quantize(fp32, tmp_path / "m.onnx", calib, "auto") == "onnxruntime"
    assert list(tmp_path.iterdir()) == [tmp_path / "m.onnx"]


def test_export_int8_cli_and_torch_free_bench(tmp_path, capsys):
    out = tmp_path / "m.int8.onnx"
    argv = ["export", "alexnet", "--width", "0.25", "-o", str(out), "--int8"]
    assert main([*argv, "--calib-batches", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "INT8" in line and "test acc fp32" in line and "int8" in line
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from qmixprune.deploy.bench import main\n"
        f"sys.exit(main([{str(out)!r}, '--runs', '2', '--batch', '1,3']))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "m.int8.onnx" in res.stdout, res.stderr
    assert main([*argv, "--fp16"]) == 2
    assert main([*argv, "--calib-batches", "0"]) == 2
    assert "--calib-batches" in capsys.readouterr().err


@pytest.mark.parametrize("fail", [False, True])
def test_compress_int8_outputs(tmp_path, monkeypatch, fail):
    """compress's output stage with int8 on (search and distillation are tested elsewhere)."""
    import json

    import qmixprune.deploy.quantize as quantize_mod
    from qmixprune.data import load_data
    from qmixprune.run import outputs
    from qmixprune.run.compress import CompressConfig, Result

    if fail:  # a model outside the tolerance is not kept; the fp32 outputs still are
        monkeypatch.setattr(quantize_mod, "MIN_AGREEMENT", 1.01)
    torch.manual_seed(0)
    teacher, student = create("alexnet", width=0.25).eval(), create("alexnet", width=0.125)
    res = Result(
        target_flops=0.5,
        target_latency=None,
        original={"macs": 4, "params": 4, "test_acc": 0.5},
        pruned={"macs": 1, "params": 1, "test_acc": 0.5},
        channels={"g": {"before": 4, "after": 2}},
        search={"reward": 0.5, "evaluations": 1, "seconds": 1},
        finetune=[],
        latency=None,
        seed=0,
        versions={},
        model=student.eval(),
    )
    cfg = CompressConfig(bench_runs=2, int8=True)
    out = tmp_path / "o"
    out.mkdir()
    res.latency, res.int8 = outputs.write_deployment(
        out, student.eval(), teacher, X, cfg, load_data("digits"), 1, lambda *a: None
    )
    outputs.write_report(out, res.report(), "test_acc")
    rep = json.loads((out / "report.json").read_text())
    names = [r["model"] for r in rep["latency"]["results"]]
    md = (out / "report.md").read_text()
    if fail:
        assert not (out / "model.int8.onnx").exists() and "disagrees" in rep["int8"]["error"]
        assert names == ["original", "pruned"] * 2 and "INT8: none kept" in md
    else:
        assert (out / "model.int8.onnx").is_file() and 0 <= rep["int8"]["int8_test_acc"] <= 1
        assert names == ["original", "pruned", "pruned-int8"] * 2
        assert "INT8 (model.int8.onnx" in md


def test_fixed_batch_model_quantizes_and_checks_every_sample(tmp_path):
    m = create("alexnet", width=0.25).eval()
    fixed = export_onnx(m, tmp_path / "f.onnx", X.repeat(4, 1, 1, 1), dynamic_batch=False).path
    res = quantize_checked(fixed, tmp_path / "f.int8.onnx", samples(10), samples(7, seed=1), 2)
    assert res.calib_samples == 8 and input_shape(res.path)[1][0] == 4  # whole batches only
    assert res.agreement >= MIN_AGREEMENT and res.fp32_acc is not None  # all 7 test samples


def test_cpu_has_vnni_reads_the_flags():
    from qmixprune.deploy.quantize import cpu_has_vnni

    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert not cpu_has_vnni(avx2, "x86_64")
    assert cpu_has_vnni(avx2.replace("avx2", "avx2 avx512_vnni"), "x86_64")
    assert cpu_has_vnni(avx2.replace("avx2", "avx_vnni"), "AMD64")
    assert cpu_has_vnni(avx2, "aarch64")  # ARM's kernels: nothing to avoid
    assert cpu_has_vnni("", "x86_64")  # unreadable flags: keep full-range weights


@pytest.mark.parametrize("vnni", [False, True])
def test_weights_use_seven_bits_on_cpus_without_vnni(fp32, tmp_path, monkeypatch, vnni):
    import onnx

    from qmixprune.deploy import quantize as q

    monkeypatch.setattr(q, "cpu_has_vnni", lambda: vnni)
    calib = calibration_arrays(samples(16), ["batch", 3, 32, 32], 8)
    widest = {}
    for runtime in RUNTIMES:
        out = tmp_path / f"{runtime}.onnx"
        quantize(fp32, out, calib, "onnxruntime", runtime)
        proto = onnx.load(str(out))
        weights = [
            onnx.numpy_helper.to_array(i)
            for i in proto.graph.initializer
            if i.data_type == onnx.TensorProto.INT8 and i.name.endswith("_quantized")
        ]
        assert weights
        widest[runtime] = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    # 7-bit weights for ONNX Runtime on a CPU without VNNI (16-bit sums saturate otherwise);
    # TensorRT's kernels have no such limit: full 8 bits
    assert widest["onnxruntime"] <= 64 if not vnni else widest["onnxruntime"] > 64
    assert widest["tensorrt"] > 64


def test_tensorrt_form_keeps_biases_in_float(fp32, tmp_path):
    """Issue 24 (2): QDQ mode stored biases as int32 behind DequantizeLinear, which TensorRT's
    dequantize layer does not take; for TensorRT no int32 tensor may feed a DequantizeLinear
    (ONNX Runtime's form keeps its int32 biases: its integer kernels want them)."""
    import onnx

    calib = calibration_arrays(samples(16), ["batch", 3, 32, 32], 8)
    int32_dq = {}
    for runtime in RUNTIMES:
        out = tmp_path / f"{runtime}.onnx"
        quantize(fp32, out, calib, "onnxruntime", runtime)
        proto = onnx.load(str(out))
        int32 = {i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT32}
        int32_dq[runtime] = [
            n.name
            for n in proto.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in int32
        ]
    assert int32_dq["tensorrt"] == []
    assert int32_dq["onnxruntime"]  # the test can see int32 biases when they are there
