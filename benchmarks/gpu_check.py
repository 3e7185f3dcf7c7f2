"""Acceptance check of the GPU path, in one command (a CPU run checks the same code on the CPU).

    python benchmarks/gpu_check.py                 # cuda when a GPU is visible, else cpu
    python benchmarks/gpu_check.py --device cuda:1 --out results/ --row-timeout 240

Rows (pass / fail / skip, with figures; a row that needs what is missing here is a skip
with the reason, never a pass):
  native-ops    every native op against its reference on the device (the CPU tests'
                tolerances), with inputs large enough for the multi-block paths (> 1024
                elements per channel, a gather over 16M elements, channels-last input)
  demo          `qmixprune demo --quick --device D` end to end in a temp dir; report says D
                (on CUDA: and backends.cuda == "native")
  distill       one distillation epoch (AMP on CUDA: bf16 where supported, fp32 on the CPU)
  distill-fp16  one epoch under fp16 autocast with the GradScaler (CUDA only)
  nccl          one process, NCCL: all_reduce of a CUDA tensor, barrier with device_ids, a
                DDP step (CUDA only)
  torchrun      2 processes (NCCL when 2 GPUs are visible, else gloo on the CPU): one
                distillation epoch ending with identical weights, search evaluations shared
  pytest-cuda   `pytest -m cuda tests/` (CUDA only)
  ort-cuda      ONNX Runtime with the CUDA provider against the CPU provider (skip without it)
  tensorrt      a TensorRT engine built and timed (skip when tensorrt does not import)
  trt-profile   `qmixprune profile --provider tensorrt --device D` (the model on the GPU)
  trt-int8      `qmixprune export --int8 --tensorrt int8` (Q/DQ model, INT8 engine)
Every row runs under --row-timeout seconds. Prints the table, writes the JSON atomically
(--json, and into --out DIR as gpu_check-<device>.json), exits 1 when any row failed
(2: bad input).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qmixprune import analyze, apply_plan, make_plan, native, ops  # noqa: E402
from qmixprune.device import resolve  # noqa: E402
from qmixprune.errors import UserError  # noqa: E402
from qmixprune.files import write_bytes  # noqa: E402


class Skip(Exception):
    """A check that cannot run here (what it needs is absent): a 'skip' row, not a failure."""


class RowTimeout(Exception):
    """A row ran past its time limit."""


def _needs_cuda(device: torch.device) -> None:
    if device.type != "cuda":
        raise Skip("--device is the CPU")


def _env() -> dict:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def _cli(args: list[str], workdir: Path, timeout: float | None = None):
    """``qmixprune ARGS`` in a subprocess; fails the row with the end of its output."""
    res = subprocess.run(
        [sys.executable, "-m", "qmixprune", *args],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=_env(),
        timeout=timeout,
    )
    if res.returncode != 0:
        raise AssertionError(f"exit {res.returncode}: {(res.stderr or res.stdout)[-600:]}")
    return res


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def check_native_ops(device: torch.device) -> dict:
    """Each op's native kernels on ``device`` against the reference on ``device``, at the
    tolerances of tests/test_native.py."""
    if not native.available(device.type):
        raise AssertionError(f"no native kernels for {device.type}: {native.why_not(device.type)}")
    g = torch.Generator().manual_seed(0)
    figures = {}
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        shapes = [(64, 3, 3, 3), (128, 64, 3, 3), (10, 512), (1, 5), (7,), (0, 4)]
        ws = [torch.randn(*s, generator=g).to(dtype).to(device) for s in shapes]
        for p in (1, 2):
            for a, b in zip(ops.filter_norms(ws, p, True), ops.filter_norms(ws, p, False)):
                assert a.device == device
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
                figures["filter_norms"] = max(figures.get("filter_norms", 0), _max_diff(a, b))
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        for a, b in zip(ops.fpgm(ws, True), ops.fpgm(ws, False)):
            scale = max([1.0, *b.abs().tolist()])
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale)
            figures["fpgm"] = max(figures.get("fpgm", 0), _max_diff(a, b) / scale)
        gammas = [w.reshape(-1) for w in ws]
        for a, b in zip(ops.bn_scale(gammas, True), ops.bn_scale(gammas, False)):
            torch.testing.assert_close(a, b)
        act = torch.relu(torch.randn(4, 5, 6, 6, generator=g)).to(dtype).to(device)
        sums = [torch.zeros(5, dtype=torch.float64, device=device) for _ in range(2)]
        zeros = [torch.zeros(5, dtype=torch.long, device=device) for _ in range(2)]
        for _ in range(3):
            ops.channel_stats_(act, sums[0], zeros[0], True)
            ops.channel_stats_(act, sums[1], zeros[1], False)
        torch.testing.assert_close(sums[0], sums[1])
        assert torch.equal(zeros[0], zeros[1])
        figures["channel_stats"] = max(figures.get("channel_stats", 0), _max_diff(*sums))
    figures.update(_large_inputs(device, g))
    for dtype in (torch.float32, torch.float16, torch.int64, torch.uint8, torch.bool):
        ts = [(torch.randn(8, 6, 3, 3, generator=g) * 10).to(dtype).to(device)]
        ts += [(torch.randn(5, 7, generator=g) * 10).to(dtype).to(device).t()]
        rows = [torch.tensor([7, 0, 3], device=device), None]
        cols = [torch.tensor([5, 0], device=device), torch.tensor([4, 1], device=device)]
        for a, b in zip(
            ops.gather_channels(ts, rows, cols, True), ops.gather_channels(ts, rows, cols, False)
        ):
            assert a.device == device and a.dtype == b.dtype and torch.equal(a, b)
    figures["gather_channels"] = 0.0  # exact
    # a whole model pruned on the device equals the reference path's result
    from qmixprune.models import create

    m = create("resnet56", width=0.25).eval().to(device)
    graph = analyze(m, torch.zeros(1, 3, 32, 32, device=device))
    plan = make_plan(m, graph, 0.5, importance="l1")
    a = apply_plan(m, graph, plan)
    native_available = native.available
    try:
        native.available = lambda d="cpu": False
        b = apply_plan(m, graph, plan)
    finally:
        native.available = native_available
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert va.device.type == device.type and torch.equal(va, vb), k
    return {"backend": native.backend(device.type), **{k: f"{v:.1e}" for k, v in figures.items()}}


def _large_inputs(device: torch.device, g: torch.Generator) -> dict:
    """Sizes that take the kernels' multi-block paths: filters of 4608 (> 1024) elements,
    6400 elements per channel, channels-last activations, a gather over 16.8M elements."""
    ws = [torch.randn(256, 512, 3, 3, generator=g).to(device)]
    for p in (1, 2):
        for a, b in zip(ops.filter_norms(ws, p, True), ops.filter_norms(ws, p, False)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    worst = 0.0
    for a, b in zip(ops.fpgm(ws, True), ops.fpgm(ws, False)):
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * scale)
        worst = max(worst, _max_diff(a, b) / scale)
    act = torch.relu(torch.randn(8, 32, 80, 80, generator=g)).to(device)
    for x in (act, act.contiguous(memory_format=torch.channels_last)):
        sums = [torch.zeros(32, dtype=torch.float64, device=device) for _ in range(2)]
        zeros = [torch.zeros(32, dtype=torch.long, device=device) for _ in range(2)]
        ops.channel_stats_(x, sums[0], zeros[0], True)
        ops.channel_stats_(x, sums[1], zeros[1], False)
        torch.testing.assert_close(sums[0], sums[1])
        assert torch.equal(zeros[0], zeros[1]), "zero counts differ (channels-last?)"
    big = torch.randn(4096, 4096, generator=g).to(device)
    rows = [torch.randperm(4096, generator=g)[:3000].to(device)]
    cols = [torch.randperm(4096, generator=g)[:2000].to(device)]
    a = ops.gather_channels([big], rows, cols, True)[0]
    assert torch.equal(a, ops.gather_channels([big], rows, cols, False)[0]), "16M gather differs"
    return {"fpgm_large": worst}


def report_backend(rep: dict, kind: str) -> str:
    """What ran the ops on ``kind`` devices in a compress report (``versions.backends``)."""
    return rep.get("versions", {}).get("backends", {}).get(kind, "?")


def check_demo(device: torch.device, workdir: Path) -> dict:
    """The whole pipeline as a user runs it, in a subprocess."""
    out = workdir / "demo"
    cmd = [sys.executable, "-m", "qmixprune", "demo", "--quick", "--device", str(device)]
    t0 = time.perf_counter()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    res = subprocess.run(
        [*cmd, "-o", str(out), "--quiet"], capture_output=True, text=True, cwd=workdir, env=env
    )
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise AssertionError(f"exit {res.returncode}: {(res.stderr or res.stdout)[-600:]}")
    rep = json.loads((out / "report.json").read_text())
    assert rep.get("device") == str(device), f"report says device {rep.get('device')!r}"
    assert (out / "model.safetensors").is_file() and (out / "model.onnx").is_file()
    backend = report_backend(rep, device.type)
    if device.type == "cuda":  # the CUDA kernels must have run, not the reference path
        assert backend == "native", f"report's backends.cuda is {backend!r}"
    return {
        "report_device": rep["device"],
        "backend": backend,
        "macs_ratio": round(rep["pruned"]["macs"] / rep["original"]["macs"], 3),
        "test_acc": f"{rep['original']['test_acc']:.3f}->{rep['pruned']['test_acc']:.3f}",
        "seconds": round(seconds, 1),
    }


def _small_job(train_size: int = 256):
    """A pruned VGG-16 (width 1/8) student, its teacher and the digits data."""
    from qmixprune.data import load_data
    from qmixprune.models import create

    torch.manual_seed(0)
    data = load_data("digits", seed=0)
    data.train = torch.utils.data.Subset(data.train, range(train_size))
    teacher = create("vgg16", width=0.125).eval()
    graph = analyze(teacher, torch.zeros(1, *data.input_shape))
    student = apply_plan(teacher, graph, make_plan(teacher, graph, 0.5))
    return teacher, student, data


def _trained(student: torch.nn.Module):
    """An ``on_epoch`` hook keeping the weights the epoch trained: ``distill`` returns the
    incoming student when no epoch beats it on val, so its result says nothing of training."""
    seen: list[list[torch.Tensor]] = []

    def hook(entry: dict) -> None:
        seen.append([p.detach().clone() for p in student.parameters()])

    hook.seen = seen
    return hook


def _assert_trained(s, before, hist, device, hook) -> None:
    """An epoch ran on ``device`` with a finite loss and moved the trained copy's weights."""
    assert all(p.device == device for p in s.parameters()), "the student left the device"
    assert hist and math.isfinite(hist[0]["loss"]), f"loss {hist[0]['loss'] if hist else None}"
    assert hook.seen, "no epoch ran"
    trained = hook.seen[-1]
    assert all(t.device == device for t in trained), "the epoch trained off the device"
    assert any(not torch.equal(a.to(device), b) for a, b in zip(before, trained)), "no update"


def check_distill(device: torch.device) -> dict:
    from qmixprune.distill import DistillConfig, amp_dtype, distill

    teacher, student, data = _small_job()
    before = [p.detach().clone() for p in student.parameters()]
    cfg = DistillConfig(epochs=1, batch_size=64, lr=0.05, amp=device.type == "cuda")
    t0 = time.perf_counter()
    hook = _trained(student)
    s, hist = distill(student, teacher, data, cfg, device=device, on_epoch=hook)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    _assert_trained(s, before, hist, device, hook)
    dtype = amp_dtype(device, cfg.amp)
    return {
        "amp": str(dtype).replace("torch.", "") if dtype else "off",
        "loss": round(hist[0]["loss"], 4),
        "val_acc": round(hist[0]["val_acc"], 4),
        "seconds": round(seconds, 1),
    }


def check_distill_fp16(device: torch.device) -> dict:
    """One epoch under fp16 autocast with its GradScaler (what GPUs without bf16 run; on a
    bf16 GPU the dtype is forced)."""
    from qmixprune import distill as mod

    _needs_cuda(device)
    teacher, student, data = _small_job()
    before = [p.detach().clone() for p in student.parameters()]
    cfg = mod.DistillConfig(epochs=1, batch_size=64, lr=0.05, amp=True)
    real = mod.amp_dtype
    mod.amp_dtype = lambda d, enabled=True: torch.float16 if enabled and d.type == "cuda" else None
    try:
        hook = _trained(student)
        t0 = time.perf_counter()
        s, hist = mod.distill(student, teacher, data, cfg, device=device, on_epoch=hook)
        torch.cuda.synchronize(device)
    finally:
        mod.amp_dtype = real
    _assert_trained(s, before, hist, device, hook)
    return {
        "amp": "float16+GradScaler",
        "loss": round(hist[0]["loss"], 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def check_nccl(device: torch.device) -> dict:
    """NCCL in one process: all_reduce of a CUDA tensor, a barrier with device_ids, one DDP
    step (the torchrun row needs 2 GPUs for NCCL; this one runs on one)."""
    import torch.distributed as dist

    _needs_cuda(device)
    if not dist.is_nccl_available():
        raise Skip("torch was built without NCCL")
    if dist.is_initialized():
        raise AssertionError("a process group is already active")
    with torch.cuda.device(device):
        dist.init_process_group(
            "nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
        )
        try:
            t = torch.full((1 << 20,), 2.0, device=device)
            dist.all_reduce(t)
            torch.cuda.synchronize(device)
            assert torch.equal(t, torch.full_like(t, 2.0)), "all_reduce changed a 1-rank sum"
            dist.barrier(device_ids=[device.index])
            model = torch.nn.Linear(16, 4).to(device)
            ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
            w0 = model.weight.detach().clone()
            opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
            ddp(torch.randn(8, 16, device=device)).square().mean().backward()
            opt.step()
            torch.cuda.synchronize(device)
            assert not torch.equal(w0, model.weight), "the DDP step changed nothing"
        finally:
            dist.destroy_process_group()
    return {"nccl": ".".join(map(str, torch.cuda.nccl.version()))}


def check_pytest_cuda(device: torch.device, workdir: Path) -> dict:
    """The test suite's CUDA tests (``-m cuda``) on this machine."""
    _needs_cuda(device)
    env = _env()
    env.setdefault("CUDA_VISIBLE_DEVICES", str(device.index))
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"]
    res = subprocess.run(
        [*cmd, str(ROOT / "tests")], capture_output=True, text=True, cwd=workdir, env=env
    )
    summary = (res.stdout.strip().splitlines() or ["no output"])[-1]
    if res.returncode != 0:
        raise AssertionError(f"pytest exit {res.returncode}: {res.stdout[-600:]}")
    assert " passed" in summary, f"no CUDA test passed: {summary}"
    return {"summary": summary}


def check_trt_profile(device: torch.device, workdir: Path) -> dict:
    """What `qmixprune profile --provider tensorrt --device D` runs: the timer on a model that
    lives on the GPU, which must stay there and keep working (one small engine)."""
    from qmixprune.deploy import tensorrt
    from qmixprune.deploy.profile import engine_timer

    _needs_cuda(device)
    if not tensorrt.available():
        raise Skip("no TensorRT here (neither trtexec nor the tensorrt package)")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU()).to(device)
    model.eval()
    (ms,) = engine_timer("fp16", runs=20)([model], (1, 3, 32, 32))
    assert all(p.device == device for p in model.parameters()), "the model left the GPU"
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32, device=device))
    return {"b1": f"{float(ms[0]):.3f} ms"}


def check_trt_int8(device: torch.device, workdir: Path) -> dict:
    """`qmixprune export --int8 --tensorrt int8`: the Q/DQ model TensorRT takes, built."""
    from qmixprune.deploy import tensorrt

    _needs_cuda(device)
    if not tensorrt.available():
        raise Skip("no TensorRT here (neither trtexec nor the tensorrt package)")
    out = workdir / "m.int8.onnx"
    args = ["export", "vgg16", "--width", "0.25", "-o", str(out), "--tensorrt", "int8"]
    _cli([*args, "--calib-batches", "2", "--quantizer", "onnxruntime"], workdir)
    engine = out.with_suffix(".engine")
    assert engine.is_file(), f"no engine at {engine}"
    row = tensorrt.time_engine(engine, batch=1, runs=50, warmup=10)
    return {"b1": _ms(row), "measures": row.get("measures", "")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(out: Path, spec: str) -> None:
    """One torchrun process: join (NCCL on a GPU, gloo on the CPU), share search
    evaluations, distil one epoch, save the weights for the parent to compare."""
    from qmixprune import distributed
    from qmixprune.distill import DistillConfig, distill
    from qmixprune.search import EnvConfig, build_env

    torch.set_num_threads(1)
    device = resolve(spec)
    distributed.init(device)
    rank, world = distributed.rank_world()
    teacher, student, data = _small_job(128)
    env = build_env(
        teacher.to(device), data, EnvConfig(reward_batches=1, calib_batches=1), device=device
    )
    plans = [
        {g: max(env.low[g], env.graph.group(g).channels // k) for g in env.groups}
        for k in (1, 2, 3, 4)
    ]
    rewards = env.evaluate_many(plans)  # shared out across the ranks, gathered back to all
    _, hist = distill(
        student, teacher, data, DistillConfig(epochs=1, batch_size=32, lr=0.05), device=device
    )
    state = {k: v.cpu() for k, v in student.state_dict().items()}
    torch.save(
        {
            "state": state,
            "rewards": rewards,
            "local": env.local_evaluations,
            "distinct": len({tuple(p.values()) for p in plans}),
            "backend": torch.distributed.get_backend(),
            "device": str(device),
        },
        out / f"rank{rank}.pt",
    )
    distributed.barrier()
    torch.distributed.destroy_process_group()


def check_torchrun(device: torch.device, workdir: Path) -> dict:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    spec = "cuda" if gpus >= 2 else "cpu"  # NCCL needs one GPU per process
    out = workdir / "ddp"
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        f"--master_port={_free_port()}",
        str(Path(__file__).resolve()),
        "--ddp-worker",
        str(out),
        "--device",
        spec,
    ]
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise AssertionError(f"torchrun exit {res.returncode}: {(res.stderr or res.stdout)[-800:]}")
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    differ = [k for k in r0["state"] if not torch.equal(r0["state"][k], r1["state"][k])]
    assert not differ, f"weights differ across ranks: {differ[:3]}"
    assert r0["rewards"] == r1["rewards"], "ranks saw different search rewards"
    assert r0["local"] + r1["local"] == r0["distinct"], "each plan is scored by one rank only"
    assert r0["local"] > 0 and r1["local"] > 0, "evaluations were not shared out"
    return {
        "backend": r0["backend"],
        "devices": f"{r0['device']},{r1['device']}",
        "shared_evals": f"{r0['local']}+{r1['local']}",
        "seconds": round(seconds, 1),
        "note": "" if spec != "cpu" or device.type == "cpu" else "fewer than 2 GPUs: gloo/CPU",
    }


def _tiny_onnx(workdir: Path) -> Path:
    from qmixprune.deploy.export import export_onnx
    from qmixprune.models import create

    torch.manual_seed(0)
    path = workdir / "vgg.onnx"
    export_onnx(create("vgg16", width=0.25).eval(), path, torch.zeros(1, 3, 32, 32))
    return path


def check_ort_cuda(device: torch.device, workdir: Path) -> dict:
    import numpy as np
    import onnxruntime as ort

    from qmixprune.deploy.bench import bench, session

    _needs_cuda(device)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip("onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
    path = _tiny_onnx(workdir)
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    gpu, cpu = session(path, "cuda", device_id=device.index), session(path, "cpu")
    assert gpu.get_providers()[0] == "CUDAExecutionProvider", gpu.get_providers()
    diff = float(np.abs(gpu.run(None, {"input": x})[0] - cpu.run(None, {"input": x})[0]).max())
    assert diff < 1e-2, f"CUDA vs CPU provider max |diff| {diff}"
    rep = bench([str(path)], (1, 32), provider="cuda", runs=50, warmup=10)
    ms = {r["batch"]: r for r in rep["results"]}
    measures = rep["results"][0].get("measures", "")
    return {
        "max_diff": f"{diff:.1e}",
        **{f"b{b}": _ms(r) for b, r in ms.items()},
        "measures": measures,
    }


def _ms(row: dict) -> str:
    return f"{row['p50_ms']:.3f} ms"


def check_tensorrt(device: torch.device, workdir: Path) -> dict:
    from qmixprune.deploy import tensorrt

    _needs_cuda(device)
    if not tensorrt.available():
        raise Skip("no TensorRT here (neither trtexec nor the tensorrt package)")
    path = _tiny_onnx(workdir)
    t0 = time.perf_counter()
    # fp32 from the fp32 ONNX builds on every TensorRT: FP16 needs the builder flag (gone
    # in 11, strongly typed only) or a float16 export
    engine = tensorrt.build_engine(path, workdir / "vgg.engine", "fp32")
    build_s = time.perf_counter() - t0
    row = tensorrt.time_engine(engine, batch=1, runs=100, warmup=10)
    return {"build_s": round(build_s, 1), "b1": _ms(row), "measures": row.get("measures", "")}


CHECKS = {
    "native-ops": lambda d, w: check_native_ops(d),
    "demo": check_demo,
    "distill": lambda d, w: check_distill(d),
    "distill-fp16": lambda d, w: check_distill_fp16(d),
    "nccl": lambda d, w: check_nccl(d),
    "torchrun": check_torchrun,
    "pytest-cuda": check_pytest_cuda,
    "ort-cuda": check_ort_cuda,
    "tensorrt": check_tensorrt,
    "trt-profile": check_trt_profile,
    "trt-int8": check_trt_int8,
}


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise RowTimeout in this (main) thread after ``seconds``; a subprocess being waited
    for is killed by subprocess.run as the exception passes."""
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def fire(signum, frame):
        raise RowTimeout(f"timed out after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_checks(
    device: torch.device,
    names: list[str],
    row_timeout: float | None = None,
    budget: float | None = None,
    clock=time.monotonic,
) -> list[dict]:
    """Each check in turn, under ``row_timeout`` seconds; once ``budget`` seconds (all rows
    together, read from ``clock``) are spent, the remaining rows are skipped, saying so."""
    rows = []
    start = clock()
    for name in names:
        limit, left = row_timeout, None
        if budget is not None:
            left = budget - (clock() - start)
            limit = left if limit is None else min(limit, left)
        with tempfile.TemporaryDirectory(prefix=f"qmixprune-gpu-check-{name}-") as tmp:
            t0 = time.perf_counter()
            try:
                if left is not None and left < 1:
                    raise Skip(f"the budget of {budget:g} s is spent")
                with time_limit(limit):
                    figures, status = CHECKS[name](device, Path(tmp)), "pass"
            except Skip as exc:
                figures, status = {"why": str(exc)}, "skip"
            except Exception as exc:  # a failed row, reported; the other rows still run
                last = traceback.format_exception_only(type(exc), exc)[-1].strip()
                figures, status = {"error": last[:400]}, "fail"
        rows.append(
            {"check": name, "status": status, "seconds": round(time.perf_counter() - t0, 1)}
            | {"figures": figures}
        )
        print(f"  {name:<12} {status}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'check':<12} {'status':<6} {'s':>7}  figures"]
    for r in rows:
        figs = ", ".join(f"{k}={v}" for k, v in r["figures"].items() if v != "")
        lines.append(f"{r['check']:<12} {r['status']:<6} {r['seconds']:>7.1f}  {figs}")
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    import platform

    info = {
        "device": str(device),
        "revision": _revision(),
        "load": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "backends": native.backends(),
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


def _revision() -> str:
    """The checkout's commit (+ "-dirty" with uncommitted changes), or "unknown"."""
    try:
        git = ["git", "-C", str(ROOT)]
        rev = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "-uno"], capture_output=True)
        if rev.returncode != 0:
            return "unknown"
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default=None, help="auto|cpu|cuda|cuda:N (default: cuda if visible)")
    p.add_argument("--json", default=None, help="where to write the results (gpu_check.json)")
    p.add_argument("--out", default=None, help="a folder for gpu_check-<device>.json (made)")
    p.add_argument(
        "--row-timeout", type=float, default=300.0, help="seconds per row before it fails"
    )
    p.add_argument(
        "--budget", type=float, default=None, help="seconds for all rows; later rows skip"
    )
    p.add_argument("--only", nargs="+", choices=list(CHECKS), help="run only these checks")
    p.add_argument("--ddp-worker", metavar="DIR", help=argparse.SUPPRESS)  # torchrun's processes
    args = p.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(Path(args.ddp_worker), args.device or "cpu")
        return 0
    try:
        device = resolve(args.device or "auto")
    except UserError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    if args.row_timeout <= 0 or (args.budget is not None and args.budget <= 0):
        print("gpu_check: error: --row-timeout and --budget must be > 0 seconds", file=sys.stderr)
        return 2
    paths = [Path(args.json)] if args.json else []
    if args.out:
        paths.append(Path(args.out) / f"gpu_check-{device.type}.json")
    paths = paths or [Path("gpu_check.json")]
    env = environment(device)
    print(f"gpu_check on {device} ({env.get('gpu', 'CPU')}); torch {env['torch']}")
    rows = run_checks(device, args.only or list(CHECKS), args.row_timeout, args.budget)
    print(table(rows))
    failed = [r["check"] for r in rows if r["status"] == "fail"]
    env["load_after"] = [round(v, 2) for v in os.getloadavg()]
    doc = {"command": " ".join(["python", "benchmarks/gpu_check.py", *(argv or sys.argv[1:])])}
    doc |= {"environment": env, "rows": rows, "passed": not failed}
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
    print(
        f"{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed or skipped'}; "
        f"wrote {', '.join(map(str, paths))}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
