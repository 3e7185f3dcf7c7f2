"""The search's candidate rewards (kl, distill) and the final pick (successive halving)."""

import copy

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from qmixprune.data import DataSplits, load_data
from qmixprune.errors import UserError
from qmixprune.models import create
from qmixprune.search import EnvConfig, build_env
from qmixprune.search import pick as pick_module
from qmixprune.search.pick import PickConfig, pick, top_plans
from qmixprune.search.rewards import (
    distill_score,
    kendall_tau,
    kl_score,
    short_distill,
    val_accuracy,
)


def test_kendall_tau_matches_scipy_with_and_without_ties():
    from scipy.stats import kendalltau

    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    a, b = [0.1, 0.4, 0.4, 0.2, 0.9, 0.3], [3, 1, 2, 2, 5, 0]
    assert kendall_tau(a, b) == pytest.approx(kendalltau(a, b).statistic)
    assert kendall_tau([1, 1, 1], [1, 2, 3]) is None and kendall_tau([1], [2]) is None


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    ).eval()


def _batches(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen))
        for _ in range(n)
    ]


def test_kl_score_is_zero_for_the_teacher_and_negative_otherwise():
    teacher, val = _net(0), _batches(2)
    with torch.no_grad():
        logits = [teacher(x) for x, _ in val]
    score = kl_score(val, logits)
    assert score(teacher) == pytest.approx(0.0, abs=1e-6)
    assert score(_net(1)) < -1e-3


def test_short_distill_moves_the_student_towards_the_teacher_and_distill_score_copies():
    teacher, student, batches = _net(0), _net(1), _batches(4)
    with torch.no_grad():
        logits = [teacher(x) for x, _ in batches]
    kl = kl_score(batches, logits)
    before = kl(student)
    original = copy.deepcopy(student.state_dict())
    score = distill_score(teacher, batches, batches, steps=30)
    value = score(student)
    assert 0.0 <= value <= 1.0 and value == score(student)  # deterministic
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in original.items())
    trained = short_distill(student, teacher, batches, steps=30)
    assert kl(trained) > before + 1e-3  # closer to the teacher than it was
    assert val_accuracy(trained, batches) == value


@pytest.fixture(scope="module")
def digits_model():
    torch.manual_seed(0)
    return create("vgg16", width=0.125).eval(), load_data("digits", seed=0)


@pytest.mark.parametrize("reward", ["kl", "distill"])
def test_env_scores_plans_with_the_chosen_reward(digits_model, reward):
    model, data = digits_model
    cfg = EnvConfig(reward_batches=1, calib_batches=1, reward=reward, distill_steps=2)
    env = build_env(model, data, cfg, seed=0)
    full = {g: env.graph.group(g).channels for g in env.groups}
    cut = {g: max(env.low[g], c // 4) for g, c in full.items()}
    a, b = env.evaluate(full), env.evaluate(cut)
    if reward == "kl":  # against the teacher's outputs on the reward's val batch
        from qmixprune.train import loader

        val = [next(iter(loader(data.val, 128, False)))]
        with torch.no_grad():
            by_hand = kl_score(val, [model(val[0][0])])(env.evaluator.candidate(cut))
        assert b == pytest.approx(by_hand, rel=1e-4) and a <= 0 and b < 0
    else:
        assert 0 <= a <= 1 and 0 <= b <= 1
    again = build_env(model, data, cfg, seed=0).evaluate(cut)
    assert again == pytest.approx(b, abs=1e-6)


def test_env_rejects_an_unknown_reward(digits_model):
    model, data = digits_model
    with pytest.raises(UserError, match="reward must be one of"):
        build_env(model, data, EnvConfig(reward="mAP"))


class _Candidate(nn.Module):
    """A 'pruned' net that only carries its plan (the fake evaluator's candidate)."""

    def __init__(self, key):
        super().__init__()
        self.key = key
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.zeros(len(x), 3) + self.w


class _Evaluator:
    device = torch.device("cpu")

    def candidate(self, counts):
        return _Candidate(counts["g"])


class _Env:
    """The parts of a PruningEnv that the pick reads: the scored plans and their candidates."""

    def __init__(self, rewards):
        self.groups = ["g"]
        self.cache = {(k,): r for k, r in rewards.items()}
        self.evaluator = _Evaluator()


def _splits(n=64):
    x, y = torch.randn(n, 1, 8, 8), torch.randint(0, 3, (n,))
    ds = TensorDataset(x, y)
    return DataSplits.from_datasets(ds, ds, ds, num_classes=3)


def test_pick_halves_by_distilled_score_and_measures_tau(monkeypatch):
    # the search's reward ranks plans 10 > 9 > ... > 5; the distilled scores rank them the
    # other way round: the pick must follow the distilled scores and see tau = -1
    env = _Env({k: k / 10 for k in range(5, 11)})
    trained = []

    def fake_distill(student, teacher, batches, steps, lr):
        trained.append((student.key, len(batches)))
        return student

    monkeypatch.setattr(pick_module, "short_distill", fake_distill)
    monkeypatch.setattr(pick_module, "val_accuracy", lambda m, val: 1.0 - m.key / 100)
    ticks = iter([100.0, 107.5])
    cfg = PickConfig(top_k=5, steps=3, batch_size=8)
    res = pick(env, nn.Identity(), _splits(), cfg, clock=lambda: next(ticks))
    assert [c["search_reward"] for c in res.candidates] == [1.0, 0.9, 0.8, 0.7, 0.6]
    assert res.counts == {"g": 6} and res.index == 4
    assert res.tau == pytest.approx(-1.0) and res.low_tau()
    # 5 plans -> 3 -> 2 -> 1: three rounds, 5 + 3 + 2 trainings of 3 steps each
    assert res.rounds == 3 and res.steps == (5 + 3 + 2) * 3 and len(trained) == 10
    assert [len(c["scores"]) for c in res.candidates] == [1, 1, 2, 3, 3]
    assert all(n == 3 for _, n in trained)
    assert res.seconds == pytest.approx(7.5)
    assert "Kendall tau -1.00" in pick_module.low_tau_warning(res)


def test_pick_agrees_with_the_search_when_the_rewards_agree(monkeypatch):
    env = _Env({k: k / 10 for k in range(1, 9)})
    monkeypatch.setattr(pick_module, "short_distill", lambda s, t, b, n, lr: s)
    monkeypatch.setattr(pick_module, "val_accuracy", lambda m, val: m.key / 10)
    res = pick(env, nn.Identity(), _splits(), PickConfig(top_k=4, steps=1, batch_size=8))
    assert res.counts == {"g": 8} and res.index == 0 and res.tau == pytest.approx(1.0)
    assert not res.low_tau() and res.steps == 4 + 2
    assert [c for c, _ in top_plans(env, 2)] == [{"g": 8}, {"g": 7}]


def test_pick_of_one_plan_trains_nothing():
    res = pick(_Env({4: 0.5}), nn.Identity(), _splits(), PickConfig(top_k=8, batch_size=8))
    assert res.counts == {"g": 4} and res.steps == 0 and res.tau is None


def test_pick_rejects_bad_settings():
    with pytest.raises(UserError, match="top_k"):
        PickConfig(top_k=0).validate()
    with pytest.raises(UserError, match="smaller than one pick batch"):
        pick(_Env({1: 0.1, 2: 0.2}), nn.Identity(), _splits(4), PickConfig(batch_size=8))
