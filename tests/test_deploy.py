import json
import subprocess
import sys

import pytest
import torch

from qmixprune.cli import main
from qmixprune.deploy.export import export_onnx
from qmixprune.errors import UserError
from qmixprune.models import create

X = torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    import qmixprune as q

    big = create("vgg16", width=0.25).eval()
    small = q.prune(big, X, 0.5, round_to=8).eval()
    export_onnx(big, d / "big.onnx", X[:1], dynamic_batch=True)
    res = export_onnx(small, d / "small.onnx", X[:1], dynamic_batch=True, check_inputs=[X])
    assert res.max_abs_diff < 1e-4
    return d / "big.onnx", d / "small.onnx"


def test_export_matches_pytorch_and_fp16(tmp_path):
    import onnx

    m = create("resnet56", width=0.25).eval()
    res = export_onnx(m, tmp_path / "m.onnx", X[:1], opset=17)
    onnx.checker.check_model(onnx.load(str(res.path)))
    with torch.no_grad():
        scale = float(m(X[:1]).abs().max())
    assert res.max_abs_diff <= 1e-4 * max(1.0, scale)
    half = export_onnx(m, tmp_path / "h.onnx", X[:1], fp16=True)
    assert half.fp16 and half.path.stat().st_size < res.path.stat().st_size * 0.6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.onnx", "m.onnx"]  # no temp files


def test_bench_json_and_speedup(onnx_pair, tmp_path, capsys):
    big, small = onnx_pair
    out = tmp_path / "b.json"
    code = main(
        [
            "bench",
            str(big),
            str(small),
            "--batch",
            "1,4",
            "--runs",
            "5",
            "--warmup",
            "1",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    rep = json.loads(out.read_text())
    assert {"cpu", "cores", "provider", "onnxruntime"} <= set(rep["device"])
    rows = rep["results"]
    assert [(r["batch"], r["model"].endswith("small.onnx")) for r in rows] == [
        (1, False),
        (1, True),
        (4, False),
        (4, True),
    ]
    assert rows[0]["speedup"] == 1.0 and all(r["p50_ms"] <= r["p99_ms"] for r in rows)
    assert all(r["measures"] == "wall time of session.run" for r in rows)
    assert "speed-up" in capsys.readouterr().out


def test_bench_runs_without_torch(onnx_pair):
    big, small = onnx_pair
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "from qmixprune.cli import main\n"
        f"rc = main(['bench', {str(big)!r}, {str(small)!r}, '--runs', '3', '--batch', '2'])\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "sys.exit(rc)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['torch'] = None\n"
            "from qmixprune.deploy.bench import main\n"
            f"sys.exit(main([{str(small)!r}, '--runs', '2']))",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


def test_bench_bad_input(onnx_pair, tmp_path, capsys):
    big, _ = onnx_pair
    assert main(["bench", str(tmp_path / "nope.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", str(big), "--provider", "tensorrt"]) == 2
    assert "TensorrtExecutionProvider" in capsys.readouterr().err
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert main(["bench", str(tmp_path / "junk.onnx")]) == 2
    assert main(["bench", str(big), "--batch", "x"]) == 2


def test_export_cli(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "alexnet", "--width", "0.25", "-o", str(out), "--dynamic-batch"]) == 0
    assert out.is_file() and "max |diff|" in capsys.readouterr().out


def test_export_without_onnx_is_clear(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UserError, match="pip install onnx"):
        export_onnx(create("alexnet", width=0.25), tmp_path / "m.onnx", X[:1])


def test_tensorrt_missing_is_a_clear_message(tmp_path, capsys, monkeypatch):
    from qmixprune.deploy import tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert not tensorrt.available()
    out = tmp_path / "m.onnx"
    assert main(["export", "alexnet", "--width", "0.25", "-o", str(out), "--tensorrt", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "qmixprune[tensorrt]" in err and "JetPack" in err and not out.exists()
    with pytest.raises(UserError, match="TensorRT is not installed"):
        tensorrt.build_engine(tmp_path / "x.onnx", tmp_path / "x.engine")
    (tmp_path / "a.engine").write_bytes(b"x")
    assert main(["bench", str(tmp_path / "a.engine")]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err


def test_torchscript_exports_but_does_not_prune(tmp_path, capsys):
    m = create("alexnet", width=0.25).eval()
    ts = tmp_path / "ts.pt"
    torch.jit.trace(m, X[:1]).save(str(ts))
    assert main(["export", str(ts), "-o", str(tmp_path / "ts.onnx")]) == 2  # runs its code:
    assert "--trust-pickle" in capsys.readouterr().err  # an explicit opt-in, as for pickles
    assert main(["export", str(ts), "--trust-pickle", "-o", str(tmp_path / "ts.onnx")]) == 0
    argv = ["prune", str(ts), "--trust-pickle", "--ratio", "0.5", "-o", str(tmp_path / "p.st")]
    assert main(argv) == 2
    assert "TorchScript" in capsys.readouterr().err


def test_take_turns_rewarms_each_turn_and_pairs_blocks():
    import numpy as np

    from qmixprune.deploy.bench import paired_speedup, take_turns

    log, now = [], [0.0]

    def clock():
        return now[0]

    def make(name, cost):
        def call():
            log.append(name)
            now[0] += cost

        return call

    times = take_turns([make("a", 2.0), make("b", 1.0)], runs=5, block=2, rewarm=1, clock=clock)
    # turns of (1 untimed + up to 2 timed) runs, alternating, until 5 timed runs each
    assert "".join(log) == "aaabbbaaabbbaabb"
    assert [len(t) for t in times[0]] == [2, 2, 1]
    assert np.concatenate(times[1]).tolist() == [1.0] * 5
    assert paired_speedup(times[0], times[1]) == 2.0
    # a drift that slows both models in one block does not move the paired ratio
    base = [np.array([1.0]), np.array([3.0]), np.array([1.0])]
    other = [np.array([0.5]), np.array([1.5]), np.array([0.5])]
    assert paired_speedup(base, other) == 2.0


def test_export_simplify_keeps_parity(tmp_path, capsys):
    import onnx

    pytest.importorskip("onnxslim")
    m = create("resnet56", width=0.25).eval()
    res = export_onnx(m, tmp_path / "s.onnx", X[:1], simplify=True, check_inputs=[X])
    assert res.simplified and res.max_abs_diff <= 1e-4 * max(1.0, float(m(X).abs().max()))
    onnx.checker.check_model(onnx.load(str(res.path)))
    src = tmp_path / "m.safetensors"
    from qmixprune import save

    save(m, src)
    assert main(["export", str(src), "--simplify", "-o", str(tmp_path / "c.onnx")]) == 0
    assert (tmp_path / "c.onnx").is_file()


def test_export_simplify_without_onnxslim_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # import fails
    m = create("alexnet", width=0.125).eval()
    with pytest.raises(UserError, match=r"qmixprune\[simplify\]"):
        export_onnx(m, tmp_path / "s.onnx", X[:1], simplify=True)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_bench_labels_rows_by_short_unique_paths(onnx_pair, tmp_path, capsys):
    from qmixprune.deploy.bench import short_labels

    big, small = onnx_pair
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d, src in (("a", big), ("b", small)):
        (tmp_path / d / "model.onnx").write_bytes(src.read_bytes())
    paths = [str(tmp_path / "a" / "model.onnx"), str(tmp_path / "b" / "model.onnx")]
    assert short_labels(paths) == ["a/model.onnx", "b/model.onnx"]
    assert short_labels(["/x/m.onnx", "/y/n.onnx"]) == ["m.onnx", "n.onnx"]
    assert main(["bench", *paths, "--batch", "1", "--runs", "2", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "a/model.onnx" in out and "b/model.onnx" in out
    assert "median, over blocks of runs taken in turns" in out


class FakeOrt:
    """onnxruntime with every provider 'available', whose sessions run on ``actual``
    (ORT falls back silently when a GPU provider fails to load)."""

    def __init__(self, actual):
        self.actual, self.made = actual, []
        self.__version__ = "1.20.0"

    def get_available_providers(self):
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    class SessionOptions:
        def add_session_config_entry(self, key, value):
            pass

    def InferenceSession(self, path, opts=None, providers=None):  # noqa: N802 (ORT's name)
        self.made.append(providers)
        return type("S", (), {"get_providers": lambda s: list(self.actual)})()


def test_gpu_sessions_refuse_a_silent_cpu_fallback(onnx_pair, tmp_path, monkeypatch):
    """Issue 24 (5): a CUDA/TensorRT session that ORT quietly ran on the CPU timed the CPU."""
    from qmixprune.deploy.bench import session

    fake = FakeOrt(["CPUExecutionProvider"])
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    with pytest.raises(UserError, match="CUDAExecutionProvider.*fell back.*CPUExecutionProvider"):
        session(onnx_pair[0], "cuda", device_id=1)
    assert fake.made[-1][0] == ("CUDAExecutionProvider", {"device_id": 1})
    fake.actual = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    cache = tmp_path / "trt-cache"
    session(onnx_pair[0], "tensorrt", device_id=2, fp16=True, trt_cache=cache)
    name, opts = fake.made[-1][0]
    assert name == "TensorrtExecutionProvider" and opts["device_id"] == 2
    assert opts["trt_engine_cache_enable"] is True and opts["trt_fp16_enable"] is True
    assert opts["trt_engine_cache_path"] == str(cache) and cache.is_dir()
    assert fake.made[-1][1] == ("CUDAExecutionProvider", {"device_id": 2})
    fake.actual = ["CUDAExecutionProvider", "CPUExecutionProvider"]  # TensorRT failed to load
    with pytest.raises(UserError, match="TensorrtExecutionProvider"):
        session(onnx_pair[0], "tensorrt", trt_cache=cache)
    fake.actual = ["CPUExecutionProvider"]
    session(onnx_pair[0], "cpu")  # the CPU provider asked and given: fine
    assert fake.made[-1] == ["CPUExecutionProvider"]


def test_onnxruntime_is_an_extra_with_a_clear_error(onnx_pair, monkeypatch):
    """Issue 24 (6): onnxruntime (CPU) was a hard dependency, and installing it over
    onnxruntime-gpu removes the CUDA provider; the runtime is the user's choice of extra."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from pathlib import Path

    from qmixprune.deploy.bench import session

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("onnxruntime")]
    extras = project["optional-dependencies"]
    assert extras["cpu"] == ["onnxruntime>=1.17"] and extras["gpu"] == ["onnxruntime-gpu>=1.17"]
    assert "onnxruntime>=1.17" in extras["dev"]  # CI installs .[dev]
    readme = (root / "README.md").read_text()
    assert '-e ".[cpu]"' in readme  # the demo's set-up line installs a runtime
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=r"qmixprune\[cpu\].*qmixprune\[gpu\]"):
        session(onnx_pair[0], "cpu")


def test_compress_without_onnxruntime_stops_before_the_search(monkeypatch):
    """The export comes last, hours later: a missing runtime is found in the preflight."""
    from qmixprune.run.config import CompressConfig
    from qmixprune.run.preflight import check_compress

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=r"compress's ONNX export.*qmixprune\[cpu\]"):
        check_compress(create("alexnet", width=0.125), None, CompressConfig())


def test_every_latency_row_says_what_it_measures():
    """Issue 24 (10): ORT on a GPU times copies + run, trtexec GPU compute only, our engine
    loop launch + sync: each row and the printed table say which."""
    from qmixprune.deploy.bench import MEASURES, format_results

    rows = [
        {
            "model": "a.onnx",
            "batch": 1,
            "p50_ms": 2.0,
            "p90_ms": 2.0,
            "p99_ms": 2.0,
            "throughput": 500.0,
            "speedup": 1.0,
            "measures": MEASURES["gpu"],
        },
    ]
    text = format_results({"results": rows})
    assert "latency: wall time of session.run, host-device copies" in text
