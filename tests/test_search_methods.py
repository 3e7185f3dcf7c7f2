"""The search's methods and ablations: Q_tot screening, and QMIX's elite exploration as
offered to the baselines (evolution's elite mutation, the single agent's exploration)."""

import pytest
import torch

from qmixprune.data import load_data
from qmixprune.errors import UserError
from qmixprune.models import create
from qmixprune.search import EnvConfig, QmixConfig, SearchConfig, build_env, search
from qmixprune.search.baselines import evolutionary, keep_after, single_agent
from qmixprune.search.runner import SearchRun


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    return create("vgg16", width=0.125).eval(), load_data("digits", seed=0)


def _env(parts, **kw):
    model, data = parts
    cfg = EnvConfig(target_flops=0.3, reward_batches=1, calib_batches=1, round_to=1, **kw)
    return build_env(model, data, cfg, seed=0)


def test_screening_scores_the_candidate_the_mixer_values_most(parts):
    env = _env(parts)
    run = SearchRun(env, SearchConfig(seed=1, qmix=QmixConfig(warmup=0, screen=4)))
    rolled, keeps = [], []
    episode_of = run.run_episode

    def record(eps, defer=False):
        rolled.append(episode_of(eps, defer))
        keeps.append(env.keep.clone())
        return rolled[-1]

    run.run_episode = record
    values = torch.tensor([0.1, 0.5, 2.0, -1.0])
    run.learner.final_value = lambda batch: values
    rng = run.gen.get_state()
    episode, counts = run.propose(0.5, defer=True)
    assert len(rolled) == 4 and episode is rolled[2]
    assert 0.297 <= env.cost.ratio(counts) <= 0.3
    # once that plan has been evaluated, the most valued plan not yet evaluated goes instead
    env.evaluate(counts)
    rolled.clear()
    keeps.clear()
    run.gen.set_state(rng)  # the same four candidates again
    episode, _ = run.propose(0.5, defer=True)
    keys = [tuple(env.project(k)[g] for g in env.groups) for k in keeps]
    fresh = [i for i in (2, 1, 0, 3) if keys[i] not in env.cache]
    assert episode is rolled[fresh[0] if fresh else 2]


def test_final_value_is_the_mixer_on_the_last_joint_action(parts):
    env = _env(parts)
    run = SearchRun(env, SearchConfig(seed=0))
    eps = [run.run_episode(1.0, defer=True) for _ in range(3)]
    batch = {
        k: torch.stack([e[k] for e in eps]) for k in ("obs", "state", "actions", "last_actions")
    }
    v = run.learner.final_value(batch)
    qs = run.learner.unroll(run.learner.agent, batch["obs"], batch["last_actions"])
    chosen = qs[:, :-1].gather(3, batch["actions"].unsqueeze(3)).squeeze(3)
    q_tot = run.learner.mixer(chosen, batch["state"][:, :-1])[:, -1, 0]
    assert v.shape == (3,) and torch.allclose(v, q_tot)


def test_screened_search_spends_its_budget_and_is_reproducible(parts):
    cfg = SearchConfig(
        episodes=40,
        max_evaluations=8,
        seed=2,
        qmix=QmixConfig(warmup=3, epsilon_anneal=4, batch_size=4, screen=6),
    )
    a, b = search(_env(parts), cfg), search(_env(parts), cfg)
    assert a.evaluations == 8 and a.counts == b.counts
    assert [e["reward"] for e in a.log] == [e["reward"] for e in b.log]


def test_elite_only_never_trains_the_values_it_never_uses():
    assert QmixConfig().learns() and QmixConfig(epsilon_end=1.0).learns()  # screening
    elite_only = QmixConfig(epsilon_start=1.0, epsilon_end=1.0, screen=1)
    assert not elite_only.learns() and QmixConfig(screen=1).learns()


@pytest.mark.parametrize("learns", [False, True])
def test_learner_updates_only_when_its_values_are_used(parts, learns):
    q = dict(warmup=2, batch_size=4, screen=1)
    if not learns:  # the elite-only ablation
        q.update(epsilon_start=1.0, epsilon_end=1.0)
    env = _env(parts)
    res = search(env, SearchConfig(episodes=6, seed=0, qmix=QmixConfig(**q)))
    losses = [e["loss"] for e in res.log]
    assert (res.evaluations > 0) and all(
        (x is not None) == (learns and i >= 2) for i, x in enumerate(losses)
    )


def testkeep_after_matches_the_episode_dynamics(parts):
    env = _env(parts)
    gen = torch.Generator().manual_seed(0)
    actions = torch.randint(0, env.cfg.n_actions, (env.cfg.steps, env.n_agents), generator=gen)
    env.reset()
    for a in actions:
        env.step(a, defer=True)
    assert torch.allclose(keep_after(env, actions), env.keep)


@pytest.mark.parametrize("mutation", ["elite", "gaussian"])
def test_evolution_keeps_to_budget_and_target(parts, mutation):
    env = _env(parts)
    res = evolutionary(env, budget=10, seed=0, mu=3, lam=4, mutation=mutation)
    assert res.evaluations == env.evaluations <= 10 and res.reward == max(env.cache.values())
    assert 0.297 <= env.cost.ratio(res.counts) <= 0.3
    with pytest.raises(UserError, match="mutation"):
        evolutionary(env, budget=2, mutation="cauchy")


def test_single_agent_with_elite_exploration_keeps_to_budget(parts):
    env = _env(parts)
    res = single_agent(env, budget=6, seed=0, elite_explore=1.0)
    assert res.evaluations == env.evaluations <= 6
    assert 0.297 <= env.cost.ratio(res.counts) <= 0.3
