from collections import namedtuple

import pytest
import torch

from qmixprune import device as dv
from qmixprune.errors import UserError


def _gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_auto_without_gpu_is_cpu(monkeypatch):
    _gpus(monkeypatch, 0)
    assert dv.resolve("auto") == torch.device("cpu")
    assert dv.resolve(None) == torch.device("cpu")
    assert dv.resolve("cpu") == torch.device("cpu")
    assert dv.resolve(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_request_without_gpu_is_one_line_error(monkeypatch, spec):
    _gpus(monkeypatch, 0)
    with pytest.raises(UserError) as e:
        dv.resolve(spec)
    assert "\n" not in str(e.value) and "--device cpu" in str(e.value)


def test_auto_with_gpus_and_torchrun(monkeypatch):
    _gpus(monkeypatch, 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dv.resolve("auto") == torch.device("cuda", 0)
    assert dv.resolve("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dv.resolve("auto") == torch.device("cuda", 1)
    assert dv.resolve("cuda") == torch.device("cuda", 1)
    assert dv.resolve("cuda:0") == torch.device("cuda", 0)  # as given
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UserError, match="at most 2 processes"):
        dv.resolve("auto")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "mps", "cuda:"])
def test_bad_spec(monkeypatch, spec):
    _gpus(monkeypatch, 1)
    with pytest.raises(UserError, match="auto, cpu, cuda or cuda:N"):
        dv.resolve(spec)


def test_cuda_index_out_of_range(monkeypatch):
    _gpus(monkeypatch, 1)
    with pytest.raises(UserError, match="GPU 3 is not visible"):
        dv.resolve("cuda:3")


def test_to_device_recurses_and_keeps_types():
    P = namedtuple("P", "x y")
    obj = {"a": (torch.ones(2), [torch.zeros(1), "s"]), "b": P(torch.ones(1), 3), "c": None}
    out = dv.to_device(obj, torch.device("cpu"))
    assert isinstance(out["a"], tuple) and isinstance(out["a"][1], list)
    assert isinstance(out["b"], P) and out["b"].y == 3 and out["c"] is None
    assert out["a"][1][1] == "s" and torch.equal(out["a"][0], torch.ones(2))
    # a meta device proves tensors really move (no GPU needed)
    moved = dv.to_device([torch.ones(2), (torch.ones(1),)], torch.device("meta"))
    assert moved[0].device.type == "meta" and moved[1][0].device.type == "meta"


def test_module_device():
    assert dv.module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert dv.module_device(torch.nn.ReLU()) == torch.device("cpu")
    assert dv.module_device(torch.nn.Linear(2, 2, device="meta")).type == "meta"


@pytest.mark.parametrize("command", ["prune", "search", "compress", "profile", "demo"])
def test_cli_cuda_without_gpu_exits_2_before_work(monkeypatch, tmp_path, capsys, command):
    from qmixprune.cli import main

    _gpus(monkeypatch, 0)
    out = tmp_path / "out"
    args = {
        "prune": ["prune", "vgg16", "--ratio", "0.5", "-o", str(out)],
        "search": ["search", "vgg16", "-o", str(out)],
        "compress": ["compress", "vgg16", "-o", str(out)],
        "profile": ["profile", "vgg16", "-o", str(out)],
        "demo": ["demo", "-o", str(out)],
    }[command]
    assert main([*args, "--device", "cuda:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--device cuda:1" in err and "--device cpu" in err
    assert not out.exists()  # refused before any work or any write


def test_cli_prune_on_the_cpu_device(tmp_path, capsys):
    from qmixprune.cli import main

    out = tmp_path / "p.safetensors"
    rc = main(
        ["prune", "vgg16", "--width", "0.125", "--ratio", "0.5", "-o", str(out), "--device", "cpu"]
    )
    assert rc == 0 and out.is_file()
