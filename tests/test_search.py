import json
from dataclasses import replace

import pytest
import torch

from qmixprune.data import load_data
from qmixprune.errors import UserError
from qmixprune.models import create
from qmixprune.search import (
    EnvConfig,
    QLearner,
    QmixConfig,
    QMixer,
    SearchConfig,
    SearchFiles,
    build_env,
    search,
)
from qmixprune.search.env import PruningEnv


def test_mixer_is_monotonic():
    torch.manual_seed(0)
    mixer = QMixer(n_agents=5, state_dim=7)
    qs = torch.randn(4, 3, 5, requires_grad=True)
    q_tot = mixer(qs, torch.randn(4, 3, 7))
    assert q_tot.shape == (4, 3, 1)
    (grad,) = torch.autograd.grad(q_tot.sum(), qs)
    assert (grad >= 0).all() and (grad > 0).any()


def test_learner_solves_cooperative_matrix_game():
    # joint payoff; the optimum (0, 0) is representable by a monotonic mix of per-agent values
    payoff = torch.tensor([[10.0, 0.0, 2.0], [0.0, 4.0, 0.0], [2.0, 0.0, 3.0]])
    torch.manual_seed(0)
    cfg = QmixConfig(lr=5e-3, standardize_rewards=False, target_update=20, td_lambda=0.0)
    learner = QLearner(obs_dim=1, state_dim=2, n_agents=2, n_actions=3, cfg=cfg)
    gen = torch.Generator().manual_seed(0)
    b = 64
    obs, state = torch.ones(b, 2, 2, 1), torch.ones(b, 2, 2)
    for _ in range(400):
        actions = torch.randint(0, 3, (b, 1, 2), generator=gen)
        batch = {
            "obs": obs,
            "state": state,
            "actions": actions,
            "last_actions": torch.zeros(b, 2, 2, dtype=torch.long),
            "reward": payoff[actions[:, 0, 0], actions[:, 0, 1]][:, None],
            "done": torch.ones(b, 1),
        }
        learner.train(batch, 0.0, 1.0)
    qs = learner.unroll(learner.agent, obs[:1], torch.zeros(1, 2, 2, dtype=torch.long))[0, 0]
    assert qs.argmax(1).tolist() == [0, 0]


@pytest.fixture(scope="module")
def env_parts():
    torch.manual_seed(0)
    data = load_data("digits", seed=0)
    model = create("vgg16", width=0.125).eval()
    return model, data


def make_env(env_parts, **kw):
    model, data = env_parts
    return build_env(model, data, EnvConfig(reward_batches=1, calib_batches=2, **kw), seed=0)


@pytest.mark.parametrize("target,round_to", [(0.4, 1), (0.2, 4), (0.1, 1)])
def test_wall_always_meets_target(env_parts, target, round_to):
    env = make_env(env_parts, target_flops=target, round_to=round_to)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        env.reset()
        for _ in range(env.cfg.steps):
            env.step(torch.randint(0, env.cfg.n_actions, (env.n_agents,), generator=gen))
        counts = env.project(env.keep)
        assert target * 0.99 <= env.cost.ratio(counts) <= target
        assert all(counts[g] >= env.low[g] for g in env.groups)
        if round_to > 1:
            assert all(
                k % round_to == 0 or k == env.graph.group(g).channels for g, k in counts.items()
            )


def test_unreachable_target_is_refused_naming_groups(env_parts):
    with pytest.raises(UserError, match=r"unreachable.*features\.\d+ \(floor"):
        make_env(env_parts, target_flops=0.05, min_keep=0.5)


def test_search_is_reproducible_and_resumable(env_parts, tmp_path):
    cfg = SearchConfig(
        episodes=12,
        seed=3,
        checkpoint_every=4,
        qmix=QmixConfig(warmup=4, epsilon_anneal=6, batch_size=4),
    )
    full = search(make_env(env_parts), cfg, _files(tmp_path / "a"))
    again = search(make_env(env_parts), cfg)
    assert full.counts == again.counts and [e["reward"] for e in full.log] == [
        e["reward"] for e in again.log
    ]

    class Stop(Exception):
        pass

    def kill_at_10(entry):
        if entry["episode"] == 10:
            raise Stop

    with pytest.raises(Stop):
        search(make_env(env_parts), cfg, _files(tmp_path / "b"), on_episode=kill_at_10)
    resumed = search(make_env(env_parts), cfg, _files(tmp_path / "b"), resume=True)
    assert resumed.counts == full.counts and resumed.reward == full.reward
    assert [e["reward"] for e in resumed.log] == [e["reward"] for e in full.log]
    lines = (tmp_path / "b" / "search_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["episode"] for x in lines] == list(range(1, 13))
    with pytest.raises(UserError, match="another configuration"):
        search(make_env(env_parts), SearchConfig(episodes=13, seed=3), _files(tmp_path / "b"), True)


def test_env_rejects_bad_config(env_parts):
    with pytest.raises(UserError, match="target_flops"):
        make_env(env_parts, target_flops=1.2)
    assert isinstance(make_env(env_parts), PruningEnv)


def _tiny_env(seed=0):
    torch.manual_seed(0)
    data = load_data("digits", seed=0)
    model = create("vgg16", width=0.125).eval()
    cfg = EnvConfig(reward_batches=1, calib_batches=1, round_to=1)
    return build_env(model, data, cfg, seed=seed)


PARALLEL = SearchConfig(
    episodes=8, envs=4, seed=5, qmix=QmixConfig(warmup=4, epsilon_anneal=4, batch_size=4)
)


def test_parallel_episodes_meet_target_and_count_evaluations():
    env = _tiny_env()
    res = search(env, PARALLEL)
    assert res.episodes == 8 and len(res.log) == 8
    assert 0.396 <= res.macs_ratio <= 0.4
    assert env.evaluations == env.local_evaluations == len(env.cache) <= 8


def _search_worker(rank, world, port, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    env = _tiny_env()
    res = search(env, PARALLEL)
    torch.save(
        {
            "counts": res.counts,
            "reward": res.reward,
            "local": env.local_evaluations,
            "total": env.evaluations,
        },
        f"{out}/rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_distributed_search_shares_evaluations(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_search_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["counts"] == r1["counts"] and r0["reward"] == r1["reward"]
    assert r0["local"] + r1["local"] == r0["total"] and r0["local"] > 0 and r1["local"] > 0
    single = search(_tiny_env(), PARALLEL)
    assert single.counts == r0["counts"] and single.reward == r0["reward"]


def _conv_bn_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 4),
    ).eval()


def test_user_score_and_calib_without_data():
    from qmixprune.search.evaluator import val_score

    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 8, 8, generator=gen) + 3.0, torch.zeros(4)) for _ in range(3)]
    seen = []

    def score(pruned):
        seen.append(pruned)
        return float(pruned[1].running_mean.sum())  # what BN recalibration measured

    cfg = EnvConfig(target_flops=0.5, round_to=1, calib_batches=2)
    env = build_env(_conv_bn_net(), None, cfg, score=score, calib=batches)
    assert [tuple(x.shape) for x in env.evaluator.calib] == [(4, 3, 8, 8)] * 2  # inputs only
    counts = env.project(torch.full((env.n_agents,), 0.5))
    reward = env.evaluate(counts)
    pruned = seen[-1]
    assert pruned[0].out_channels == counts["0"] < 16 and not pruned.training
    assert reward == pytest.approx(float(pruned[1].running_mean.sum()))
    # the statistics came from the calibration inputs: another calib gives another reward
    shifted = [(x - 6.0, y) for x, y in batches]
    other = build_env(_conv_bn_net(), None, cfg, score=score, calib=shifted).evaluate(counts)
    assert other != pytest.approx(reward)
    assert env.evaluate(counts) == reward and len(seen) == 2  # cached, not scored again
    with pytest.raises(UserError, match="needs data"):
        build_env(_conv_bn_net(), None, cfg, score=score)
    # the default score is the accuracy on the val batches
    x, _ = batches[0]
    net = _conv_bn_net()
    y = net(x).argmax(1)
    assert val_score([(x, y)])(net) == 1.0 and val_score([(x, (y + 1) % 4)])(net) == 0.0


def test_device_plumbing_on_cpu():
    from qmixprune.device import module_device
    from qmixprune.distributed import collective_device

    dev = torch.device("cpu")
    data = load_data("digits", seed=0)
    torch.manual_seed(0)
    model = create("vgg16", width=0.125).eval()
    places = []

    def score(pruned):
        places.append(module_device(pruned))
        return 0.5

    cfg = EnvConfig(reward_batches=1, calib_batches=1, round_to=1)
    env = build_env(model, data, cfg, device=dev, score=score)
    assert env.evaluator.device == dev and all(x.device == dev for x in env.evaluator.calib)
    env.evaluate(env.project(torch.full((env.n_agents,), 0.5)))
    assert places == [dev] and collective_device() == dev  # no process group: the CPU
    default = build_env(model, data, cfg)  # the model's device by default
    assert default.evaluator.device == module_device(model)


def test_flops_target_rounds_to_8_by_default(env_parts):
    env = make_env(env_parts, target_flops=0.5)
    assert env.cfg.round_to == 8
    counts = env.project(torch.full((env.n_agents,), 0.6))
    assert all(k % 8 == 0 or k == env.graph.group(g).channels for g, k in counts.items())
    assert make_env(env_parts, target_flops=0.5, round_to=1).cfg.round_to == 1


def test_patience_stops_early_says_when_and_resumes(tmp_path):
    env = _tiny_env()
    flat = build_env(
        env.model,
        None,
        replace(env.cfg, round_to=1),
        score=lambda m: 0.25,
        calib=env.evaluator.calib,
    )
    cfg = SearchConfig(episodes=40, seed=1, patience=5, checkpoint_every=100)
    res = search(flat, cfg, _files(tmp_path))
    assert res.early_stop is not None and res.episodes < 40
    assert res.early_stop["evaluations"] - res.early_stop["best_evaluation"] >= 5
    assert res.early_stop["episode"] == res.episodes == len(res.log)
    lines = [json.loads(x) for x in (tmp_path / "search_log.jsonl").read_text().splitlines()]
    assert lines[-1]["early_stop"]["patience"] == 5 and "early_stop" not in lines[0]
    again = search(flat, cfg, _files(tmp_path), resume=True)  # a stopped run stays stopped
    assert again.episodes == res.episodes and again.early_stop == res.early_stop
    with pytest.raises(UserError, match="patience"):
        search(flat, replace(cfg, patience=-1))


def test_search_ignores_the_global_rng(env_parts, monkeypatch):
    cfg = SearchConfig(episodes=4, seed=2, qmix=QmixConfig(warmup=2, batch_size=2))
    torch.manual_seed(1)
    a = search(make_env(env_parts), cfg)
    torch.manual_seed(2)

    def reseed(seed):
        raise AssertionError("library code seeded the global RNG")

    monkeypatch.setattr(torch, "manual_seed", reseed)
    monkeypatch.setattr(torch.random, "manual_seed", reseed)
    b = search(make_env(env_parts), cfg)
    assert [e["reward"] for e in a.log] == [e["reward"] for e in b.log] and a.counts == b.counts


class _TrainModeView(torch.nn.Module):
    """Runs in channels-last layout in eval mode only: training takes a view of a map."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _conv_bn_net()[:6]
        self.head = torch.nn.Linear(16 * 8 * 8, 4)

    def forward(self, x):
        x = self.body(x)
        x = x.view(x.size(0), -1) if self.training else x.flatten(1)
        return self.head(x)


def test_channels_last_scoring_matches_the_default_layout_and_falls_back():
    from nets import Mixed

    from qmixprune.search.evaluator import runs_channels_last, val_score

    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 8, 8, generator=gen), torch.zeros(8)) for _ in range(2)]
    x = batches[0][0]
    net = _conv_bn_net()
    y = net(x).argmax(1)
    score = val_score([(x, y)], reward="loss")  # a smooth reward: layouts must agree closely
    cfg = EnvConfig(target_flops=0.5, round_to=1, calib_batches=2)
    envs = {
        cl: build_env(net, None, replace(cfg, channels_last=cl), score=score, calib=batches)
        for cl in (False, True, None)
    }
    assert envs[None].evaluator.channels_last  # a plain conv net on the CPU: probed, on
    assert not envs[False].evaluator.channels_last
    counts = envs[False].project(torch.full((envs[False].n_agents,), 0.5))
    rewards = {cl: env.evaluate(counts) for cl, env in envs.items()}
    assert rewards[True] == pytest.approx(rewards[False], rel=1e-5)
    assert rewards[None] == rewards[True]
    pruned = envs[True].evaluator.candidate(counts)  # saved and exported as usual
    assert all(p.is_contiguous() for p in pruned.parameters())
    # a view of a feature map needs the default layout: the probe says no
    assert not runs_channels_last(Mixed().eval(), torch.randn(2, 3, 8, 8))
    assert runs_channels_last(net, x) and not runs_channels_last(net, x.flatten(1))
    # a path the probe cannot see (training mode) fails: scored in the default layout
    model = _TrainModeView().eval()
    env = build_env(model, None, replace(cfg, channels_last=True), score=score, calib=batches)
    counts = env.project(torch.full((env.n_agents,), 0.5))
    reward = env.evaluate(counts)
    assert not env.evaluator.channels_last
    ref = build_env(model, None, replace(cfg, channels_last=False), score=score, calib=batches)
    assert reward == ref.evaluate(counts)


def _files(folder):
    """The checkpoint and log of a search kept in ``folder`` (as a run's OUT keeps them)."""
    return SearchFiles(folder / "search_checkpoint.pt", folder / "search_log.jsonl")
