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


def test_cpu_skips_gpu_only_rows_and_writes_json(gpu_check, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert (
        gpu_check.main(["--device", "cpu", "--only", "ort-cuda", "tensorrt", "--json", str(out)])
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["passed"] and doc["environment"]["device"] == "cpu"
    assert [r["status"] for r in doc["rows"]] == ["skip", "skip"]
    assert "tensorrt" in capsys.readouterr().out


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
