"""benchmarks/gpu_check.py's plumbing (its checks themselves run in the benchmark)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GPU_ONLY = [
    "distill-fp16",
    "nccl",
    "pytest-cuda",
    "ort-cuda",
    "tensorrt",
    "trt-profile",
    "trt-int8",
]


def test_cpu_skips_gpu_only_rows_and_writes_json(gpu_check, tmp_path, capsys):
    out = tmp_path / "r.json"
    folder = tmp_path / "results"
    argv = ["--device", "cpu", "--only", *GPU_ONLY, "--json", str(out), "--out", str(folder)]
    assert gpu_check.main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc == json.loads((folder / "gpu_check-cpu.json").read_text())
    assert doc["passed"] and doc["environment"]["device"] == "cpu"
    assert doc["environment"]["revision"] and len(doc["environment"]["load"]) == 3
    assert [r["status"] for r in doc["rows"]] == ["skip"] * len(GPU_ONLY)
    assert all(r["figures"]["why"] for r in doc["rows"])  # each skip says why
    assert "tensorrt" in capsys.readouterr().out


def test_a_row_past_its_time_limit_fails_and_the_rest_run(gpu_check, tmp_path, monkeypatch):
    import time

    def hangs(device, workdir):
        while True:  # a hung collective or kernel: only the limit ends it
            time.sleep(0.01)

    monkeypatch.setitem(gpu_check.CHECKS, "torchrun", hangs)
    out = tmp_path / "r.json"
    argv = ["--device", "cpu", "--only", "torchrun", "tensorrt", "--row-timeout", "0.2"]
    assert gpu_check.main([*argv, "--json", str(out)]) == 1
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["status"] == "fail" and "timed out after 0.2 s" in rows[0]["figures"]["error"]
    assert rows[1]["status"] == "skip"


def test_a_failed_row_fails_the_run(gpu_check, tmp_path, monkeypatch):
    def broken(device, workdir):
        raise AssertionError("weights differ across ranks")

    monkeypatch.setitem(gpu_check.CHECKS, "torchrun", broken)
    out = tmp_path / "r.json"
    assert gpu_check.main(["--device", "cpu", "--only", "torchrun", "--json", str(out)]) == 1
    row = json.loads(out.read_text())["rows"][0]
    assert row["status"] == "fail" and "weights differ" in row["figures"]["error"]


def test_bad_device_exits_2(gpu_check, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--device", "cuda", "--json", str(tmp_path / "r.json")]) == 2
    assert not (tmp_path / "r.json").exists()


def test_distill_row_checks_the_trained_copy_not_the_winner(gpu_check):
    """distill returns the incoming student when no epoch beats it on val: the row must
    still pass when an epoch trained, and fail when nothing trained."""
    import torch

    student = torch.nn.Linear(2, 2)
    before = [p.detach().clone() for p in student.parameters()]
    hook = gpu_check._trained(student)
    with torch.no_grad():
        student.weight.add_(1.0)  # the epoch's update
    hook({"epoch": 1})
    with torch.no_grad():
        student.weight.copy_(before[0])  # distill put the incoming (better on val) weights back
    hist = [{"loss": 0.5}]
    gpu_check._assert_trained(student, before, hist, torch.device("cpu"), hook)

    idle = gpu_check._trained(student)
    idle({"epoch": 1})  # an epoch that changed nothing
    with pytest.raises(AssertionError, match="no update"):
        gpu_check._assert_trained(student, before, hist, torch.device("cpu"), idle)
    with pytest.raises(AssertionError, match="loss"):
        nan = [{"loss": float("nan")}]
        gpu_check._assert_trained(student, before, nan, torch.device("cpu"), hook)


def test_rows_past_the_budget_are_skipped_saying_so(gpu_check, monkeypatch):
    import itertools

    import torch

    ticks = itertools.count(0, 60)  # each look at the clock: a minute later
    monkeypatch.setitem(gpu_check.CHECKS, "tensorrt", lambda d, w: {"ok": 1})
    rows = gpu_check.run_checks(
        torch.device("cpu"), ["tensorrt", "ort-cuda"], 300, budget=100, clock=lambda: next(ticks)
    )
    assert [r["status"] for r in rows] == ["pass", "skip"]
    assert rows[1]["figures"]["why"] == "the budget of 100 s is spent"


def test_device_run_dry_run_writes_everything_under_out(tmp_path):
    """benchmarks/device_run.sh as on a lent machine, on the CPU without the build step."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "DEVICE": "cpu"}
    env |= {"SKIP_BUILD": "1", "ONLY": "tensorrt", "BUDGET": "300"}
    res = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_run.sh")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout[-800:] + res.stderr[-800:]
    names = {p.name for p in tmp_path.iterdir()}
    assert {"installed.txt", "build.log", "backends.txt", "gpu_check.txt"} <= names
    assert json.loads((tmp_path / "gpu_check-cpu.json").read_text())["rows"][0]["status"] == "skip"
    assert "torch" in (tmp_path / "installed.txt").read_text()
    assert "--no-build-isolation" in (ROOT / "benchmarks" / "device_run.sh").read_text()


def test_demo_row_reads_the_backends_where_compress_reports_them(gpu_check):
    """report.json keeps them under "versions" (compress's _versions); a top-level lookup
    found nothing and the CUDA row would have failed on every GPU."""
    rep = {"versions": {"backends": {"cpu": "native", "cuda": "reference (not built)"}}}
    assert gpu_check.report_backend(rep, "cpu") == "native"
    assert gpu_check.report_backend(rep, "cuda").startswith("reference")
    assert gpu_check.report_backend({}, "cuda") == "?"
