import pytest
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


class FakeGroup:
    """Rank 1 of a two-rank group, in one process: rank 0's broadcast list and its share of
    every all_reduce come from here; the lengths reduced are recorded (unequal lengths hang
    NCCL)."""

    def __init__(self, rank0_todo, rank0_scores):
        self.todo, self.scores, self.lengths = rank0_todo, rank0_scores, []

    def install(self, monkeypatch, evaluator_module):
        monkeypatch.setattr(evaluator_module, "rank_world", lambda: (1, 2))
        monkeypatch.setattr(dist, "broadcast_object_list", self.broadcast, raising=False)
        monkeypatch.setattr(dist, "all_reduce", self.all_reduce)

    def broadcast(self, objs, src=0, group=None, device=None):
        assert src == 0
        objs[0] = list(self.todo)

    def all_reduce(self, t, op=None, group=None):
        self.lengths.append(t.numel())
        mine = torch.zeros_like(t)
        for i in range(0, len(self.todo), 2):  # rank 0 scored the even positions
            mine[i] = self.scores[self.todo[i]]
        t += mine


def _evaluator(scores):
    from qmixprune.search.evaluator import PlanEvaluator

    ev = PlanEvaluator.__new__(PlanEvaluator)
    ev.groups, ev.cache, ev.device = ["a", "b"], {}, torch.device("cpu")
    ev.evaluations = ev.local_evaluations = 0
    ev._score = lambda counts: scores[(counts["a"], counts["b"])]
    return ev


def test_ranks_score_rank0s_list_and_stop_together_on_divergence(monkeypatch):
    """Issue 24 (12): ranks never checked they scored the same plans; on divergence the NCCL
    all_reduce lengths differed and the run hung. Rank 0's list is broadcast; a rank whose
    own list differs makes every rank raise after the same collectives."""
    from qmixprune.errors import UserError
    from qmixprune.search import evaluator

    scores = {(1, 1): 0.1, (2, 2): 0.2, (3, 3): 0.3, (4, 4): 0.4}
    plans = [{"a": k, "b": k} for k in (1, 2, 3)]
    group = FakeGroup([(1, 1), (2, 2), (3, 3)], scores)
    group.install(monkeypatch, evaluator)
    ev = _evaluator(scores)
    assert ev.evaluate_many(plans) == [0.1, 0.2, 0.3]
    assert ev.local_evaluations == 1  # position 1 is rank 1's
    group.todo = [(4, 4)]  # rank 0 asks for another plan than rank 1 does
    with pytest.raises(UserError, match="different plans"):
        _evaluator(scores).evaluate_many([{"a": 3, "b": 3}, {"a": 2, "b": 2}])
    # the same reduction as rank 0's (its list plus the flag): no rank is left waiting
    assert group.lengths[-1] == len(group.todo) + 1


def test_collective_device_is_the_evaluators_device(monkeypatch):
    """Issue 24 (12): current_device() is GPU 0 unless someone bound the rank's GPU."""
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert distributed.collective_device(torch.device("cuda", 2)) == torch.device("cuda", 2)
    assert distributed.collective_device() == torch.device("cuda", 0)
