import torch
import torch.distributed as dist

from qmixprune import distributed


def _torchrun_env(monkeypatch, rank: int) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)


def test_init_binds_the_rank_gpu_then_joins_with_nccl(monkeypatch):
    calls = []
    _torchrun_env(monkeypatch, 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(dist, "init_process_group", lambda b, **k: calls.append(("init", b)))
    assert distributed.init() is True
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "nccl")]


def test_init_on_cpu_uses_gloo_even_with_gpus(monkeypatch):
    calls = []
    _torchrun_env(monkeypatch, 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(dist, "init_process_group", lambda b, **k: calls.append(("init", b)))
    assert distributed.init("cpu") is True
    assert calls == [("init", "gloo")]


def test_single_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init() is False
    assert distributed.rank_world() == (0, 1)
    assert distributed.collective_device() == torch.device("cpu")
    distributed.barrier()  # nothing to wait for


def test_collective_device_follows_the_backend(monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    assert distributed.collective_device() == torch.device("cpu")
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed.collective_device() == torch.device("cuda", 3)
