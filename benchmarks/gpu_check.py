"""Acceptance check of the GPU path, in one command (a CPU run checks the same code on the CPU).

    python benchmarks/gpu_check.py                 # cuda when a GPU is visible, else cpu
    python benchmarks/gpu_check.py --device cuda:1 --json gpu_check.json

Rows (pass / fail / skip, with figures):
  native-ops    every native op against its reference on the device (the CPU tests' tolerances)
  demo          `qmixprune demo --quick --device D` end to end in a temp dir; report says D
  distill       one distillation epoch (AMP on CUDA, fp32 on the CPU)
  torchrun      2 processes (NCCL when 2 GPUs are visible, else gloo on the CPU): one
                distillation epoch ending with identical weights, search evaluations shared
  ort-cuda      ONNX Runtime with the CUDA provider against the CPU provider (skip without it)
  tensorrt      a TensorRT engine built and timed (skip when tensorrt does not import)
Prints the table, writes the JSON atomically, exits 1 when any row failed (2: bad input).
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
    return {
        "report_device": rep["device"],
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
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
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

    if device.type != "cuda":
        raise Skip("--device is the CPU")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip("onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
    path = _tiny_onnx(workdir)
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    gpu, cpu = session(path, "cuda"), session(path, "cpu")
    assert "CUDAExecutionProvider" in gpu.get_providers(), gpu.get_providers()
    diff = float(np.abs(gpu.run(None, {"input": x})[0] - cpu.run(None, {"input": x})[0]).max())
    assert diff < 1e-2, f"CUDA vs CPU provider max |diff| {diff}"
    rep = bench([str(path)], (1, 32), provider="cuda", runs=50, warmup=10)
    ms = {r["batch"]: r for r in rep["results"]}
    return {"max_diff": f"{diff:.1e}", **{f"b{b}": _ms(r) for b, r in ms.items()}}


def _ms(row: dict) -> str:
    return f"{row['p50_ms']:.3f} ms"


def check_tensorrt(device: torch.device, workdir: Path) -> dict:
    from qmixprune.deploy import tensorrt

    if device.type != "cuda":
        raise Skip("--device is the CPU")
    if not tensorrt.available():
        raise Skip("tensorrt does not import")
    path = _tiny_onnx(workdir)
    t0 = time.perf_counter()
    # fp32 from the fp32 ONNX builds on every TensorRT: FP16 needs the builder flag (gone
    # in 11, strongly typed only) or a float16 export
    engine = tensorrt.build_engine(path, workdir / "vgg.engine", "fp32")
    build_s = time.perf_counter() - t0
    row = tensorrt.time_engine(engine, batch=1, runs=100, warmup=10)
    return {"build_s": round(build_s, 1), "b1": _ms(row)}


CHECKS = {
    "native-ops": lambda d, w: check_native_ops(d),
    "demo": check_demo,
    "distill": lambda d, w: check_distill(d),
    "torchrun": check_torchrun,
    "ort-cuda": check_ort_cuda,
    "tensorrt": check_tensorrt,
}


def run_checks(device: torch.device, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"qmixprune-gpu-check-{name}-") as tmp:
            t0 = time.perf_counter()
            try:
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
        print(f"  {name:<11} {status}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'check':<11} {'status':<6} {'s':>7}  figures"]
    for r in rows:
        figs = ", ".join(f"{k}={v}" for k, v in r["figures"].items() if v != "")
        lines.append(f"{r['check']:<11} {r['status']:<6} {r['seconds']:>7.1f}  {figs}")
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    import platform

    info = {
        "device": str(device),
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default=None, help="auto|cpu|cuda|cuda:N (default: cuda if visible)")
    p.add_argument("--json", default="gpu_check.json", help="where to write the results")
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
    env = environment(device)
    print(f"gpu_check on {device} ({env.get('gpu', 'CPU')}); torch {env['torch']}")
    rows = run_checks(device, args.only or list(CHECKS))
    print(table(rows))
    failed = [r["check"] for r in rows if r["status"] == "fail"]
    doc = {"environment": env, "rows": rows, "passed": not failed}
    write_bytes(Path(args.json), (json.dumps(doc, indent=2) + "\n").encode())
    print(
        f"{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed or skipped'}; "
        f"wrote {args.json}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
