import json
from dataclasses import replace

import pytest
import torch
from nets import fixed_timer

from qmixprune import analyze, apply_plan, save
from qmixprune.budget import Budget, CostModel
from qmixprune.cli import main
from qmixprune.data import load_data
from qmixprune.deploy.profile import profile
from qmixprune.errors import UserError
from qmixprune.latency import LatencyModel, load_table
from qmixprune.models import create
from qmixprune.pruning import plan_for_counts
from qmixprune.search import EnvConfig, build_env

X = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def setup():
    model = create("vgg16", width=0.25).eval()
    graph = analyze(model, X)
    cost = CostModel(model, graph, X)
    # fixed timings (1 ns per MAC): the orderings below cannot drift with the machine's load
    table = profile(model, cost, X, round_to=8, grid=(0.5, 1.0), timer=fixed_timer)
    return model, graph, cost, table


def test_profile_table_and_model(setup):
    model, graph, cost, table = setup
    first = table["layers"]["features.0"]
    assert first["in"] == [3] and first["out"] == [8, 16]  # the image channels are not pruned
    assert table["total_ms"] > 0 and table["device"]["provider"] == "cpu"
    assert [len(p["channels"]) for p in table["calibration"]] == [len(graph.prunable)] * 2
    lat = LatencyModel(table, cost)
    assert lat.ratio({}) == pytest.approx(1.0)
    half = {g.name: g.channels // 2 for g in graph.prunable}
    quarter = {g.name: max(1, g.channels // 4) for g in graph.prunable}
    assert lat.ratio(quarter) < lat.ratio(half) < 1.0
    assert sum(lat.group_shares().values()) > 0


def test_ort_timer_times_each_module_on_onnx_runtime():
    from qmixprune.deploy.profile import ort_timer

    modules = [torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(3, 4, 1)]
    times = ort_timer("cpu", threads=1, runs=4)(modules, (1, 3, 16, 16))
    assert [t.shape for t in times] == [(4,), (4,)] and all((t > 0).all() for t in times)


def test_best_per_mac_and_pick_from_penalties():
    from qmixprune.deploy.profile import alignment_costs, best_per_mac, pick_alignment

    def row(keep, a, macs, ms):
        return {"keep": keep, "round_to": a, "macs": macs, "ms": ms}

    # per MAC at keep 0.5: 1 -> 2.0, 8 -> 1.2, 16 -> 1.0, 32 -> 1.02 (relative to the best)
    pts = [row(1.0, 1, 1.0, 10.0)]
    pts += [row(0.5, 1, 0.5, 4.0), row(0.5, 8, 0.5, 2.4), row(0.5, 16, 0.45, 1.8)]
    pts += [row(0.5, 32, 0.5, 2.04)]
    costs = alignment_costs(pts)
    assert costs["1"] == pytest.approx(2.0) and costs["16"] == pytest.approx(1.0)
    assert best_per_mac(pts) == 16
    # the pick walks down from the reference while the fitted penalties and the time per
    # MAC stay within noise
    flat = {"1": 1.0, "2": 1.0, "4": 1.0, "8": 1.0, "16": 1.0}
    assert pick_alignment({1: 2.0, 2: 1.5, 4: 1.0, 8: 1.0}, flat, 16, noise=0.0) == 4
    assert pick_alignment({1: 2.0, 2: 1.5, 4: 1.03, 8: 1.0}, flat, 16, noise=0.0) == 8
    assert pick_alignment({1: 2.0, 2: 1.5, 4: 1.03, 8: 1.0}, flat, 16, noise=0.02) == 4
    assert pick_alignment({1: 1.2, 8: 1.1}, flat, 16, noise=0.0) == 16
    assert pick_alignment({}, {"16": 1.0}, 16, noise=0.0) == 16
    # penalties within noise, but whole models slower per MAC (a poorly fitting model)
    slow = {**flat, "4": 1.24, "8": 1.24}
    assert pick_alignment({1: 2.2, 2: 2.0, 4: 1.03, 8: 1.0}, slow, 16, noise=0.04) == 16


def test_profile_picks_the_multiple_from_fitted_penalties():
    """On fixed timings where widths off multiples of 4 run 3x slower per MAC, the profile
    fits that penalty for multiples of 1 and 2 and recommends 4 (deterministic: issue 14)."""
    from qmixprune.deploy.profile import ALIGNMENTS

    model = create("vgg16", width=0.125).eval()
    cost = CostModel(model, analyze(model, X), X)
    table = profile(model, cost, X, grid=(0.5, 1.0), timer=fixed_timer)
    assert table["round_to"] == 4 and table["noise"] == 0.0
    # the first conv's 3 image channels run 3x in every plan, so the mix is a bit under 3
    assert all(2.0 < table["penalties"][a] <= 3.0 + 1e-9 for a in ("1", "2"))
    assert set(table["alignment"]) <= {str(a) for a in ALIGNMENTS}
    assert {p["round_to"] for p in table["calibration"]} >= {4, 8, 16}  # 32: out of reach
    assert {p["round_to"] for p in table["misaligned"]} == {1, 2}
    full = {g.name: g.channels for g in analyze(model, X).prunable}
    assert all(
        c % 4 == 0 or c == full[g] for p in table["calibration"] for g, c in p["channels"].items()
    )
    # with no penalty the smallest multiple measured is as good: 1
    flat = profile(model, cost, X, grid=(1.0,), timer=lambda m, s: fixed_timer(m, s, slow=1.0))
    assert flat["round_to"] == 1


def test_latency_target_is_met_by_the_wall(setup):
    model, graph, cost, table = setup
    env = build_env(
        model,
        load_data("digits"),
        EnvConfig(target_flops=None, target_latency=0.5, reward_batches=1, calib_batches=1),
        latency_table=table,
    )
    counts = env.project(torch.rand(env.n_agents))
    assert 0.49 <= env.latency.ratio(counts) <= 0.5
    both = Budget(cost, cost.ratio(counts) * 0.9, env.latency, 0.9)
    assert both.load(counts) > 1.0  # the FLOPs target binds here
    pruned = apply_plan(model, graph, plan_for_counts(graph, counts))
    assert pruned(X).shape == (1, 10)


def test_profile_cli_and_bad_tables(tmp_path, capsys, monkeypatch):
    import qmixprune.deploy.profile as lat

    # fixed timings: the latency model and the multiple the search uses cannot drift with
    # the machine's load (issue 14: it picked multiples of 2 about 1 run in 4)
    monkeypatch.setattr(lat, "ort_timer", lambda *a, **k: fixed_timer)
    m = tmp_path / "m.safetensors"
    save(create("alexnet", width=0.125), m)
    table = tmp_path / "t.json"
    argv = ["profile", str(m), "--runs", "2", "--threads", "1", "--round-to", "4", "-o", str(table)]
    assert main(argv) == 0
    assert json.loads(table.read_text())["round_to"] == 4
    printed = capsys.readouterr().out
    assert "ms/MAC vs best" in printed and "features.0" in printed and "<- used" in printed
    assert set(json.loads(table.read_text())["layers"]) >= {"features.0", "classifier.1"}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="not a latency table"):
        load_table(tmp_path / "bad.json")
    out = tmp_path / "o"
    assert main(["search", str(m), "--target-latency", "0.5", "-o", str(out)]) == 2
    assert "--latency-table" in capsys.readouterr().err and not out.exists()
    argv = [
        "search",
        str(m),
        "--target-latency",
        "0.85",
        "--latency-table",
        str(table),
        "--episodes",
        "2",
        "--quiet",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    log = [json.loads(x) for x in (out / "search_log.jsonl").read_text().splitlines()]
    assert all(e["latency"] <= 0.85 and "macs" in e for e in log)
    best = json.loads((out / "plan.json").read_text())
    # kept counts are multiples of the table's 4 (or the whole group)
    assert all(g["kept"] % 4 == 0 or g["kept"] == g["channels"] for g in best["groups"].values())


def test_profiled_multiple_is_lowered_when_it_makes_the_target_unreachable(setup):
    from qmixprune.budget import reachable_round_to

    model, graph, cost, table = setup
    coarse = {**table, "round_to": 64}  # this VGG's groups have 16 to 128 channels
    cfg = EnvConfig(target_flops=None, target_latency=0.3, reward_batches=1, calib_batches=1)
    with pytest.warns(UserWarning, match="not the profiled 64"):
        env = build_env(model, load_data("digits"), cfg, latency_table=coarse)
    assert 1 <= env.cfg.round_to < 64 and 64 % env.cfg.round_to == 0
    groups = [g.name for g in graph.prunable]
    assert env.cfg.round_to == reachable_round_to(env.budget, groups, 64, 1, cfg.min_keep)
    counts = env.project(torch.rand(env.n_agents))
    assert env.latency.ratio(counts) <= 0.3
    # an explicit round_to is the user's word: refused with the reason, not lowered
    with pytest.raises(UserError, match="unreachable"):
        build_env(model, load_data("digits"), replace(cfg, round_to=64), latency_table=coarse)


def test_profile_times_each_layer_shape_once():
    calls = []

    def timer(modules, shape):
        if len(modules) == 1 and isinstance(modules[0], (torch.nn.Conv2d, torch.nn.Linear)):
            calls.append((repr(modules[0]), tuple(shape)))  # a layer timed alone
        return fixed_timer(modules, shape)

    model = create("resnet56", width=0.25).eval()
    cost = CostModel(model, analyze(model, X), X)
    table = profile(model, cost, X, round_to=4, grid=(0.5, 1.0), timer=timer)
    assert len(calls) == len(set(calls))  # nothing timed twice
    # 55 3x3 convs in 3 stages of identical blocks: a handful of distinct shapes
    per_layer = sum(len(t["in"]) * len(t["out"]) for t in table["layers"].values())
    assert len(calls) < per_layer / 5
    assert table["layers"]["layer1.3.conv1"] == table["layers"]["layer1.7.conv1"]


def test_latency_model_charges_misaligned_widths(setup):
    model, graph, cost, table = setup  # profiled in multiples of 8
    blind = LatencyModel({**table, "misaligned": []}, cost)
    aligned = {g.name: g.channels - 8 for g in graph.prunable}  # 16..128 wide: multiples of 8
    odd = {g: c - 1 for g, c in aligned.items()}
    by4 = {g: c + 4 for g, c in aligned.items()}
    # a whole-model timing in which the layers with odd widths ran 3x their isolated time
    ok, other = blind._parts(odd)
    assert list(other) == [1]
    ms = blind.offset + blind.scale * (ok + 3.0 * other[1])
    point = {"round_to": 1, "keep": 0.5, "channels": odd, "ms": ms}
    aware = LatencyModel({**table, "misaligned": [point]}, cost)
    assert aware.penalty == {1: pytest.approx(3.0)}
    assert aware.ratio({}) == pytest.approx(1.0)  # the unpruned model is not charged
    # the blind model calls the odd plan cheaper (fewer channels); the aware one does not
    assert blind.ratio(odd) < blind.ratio(aligned) < aware.ratio(odd)
    # multiples of 4 were not measured: charged like the finer alignment that was
    assert aware.ratio(by4) > blind.ratio(by4) and aware.ratio(aligned) == blind.ratio(aligned)


@pytest.mark.parametrize("flag", [["--round-to", "0"], ["--runs", "0"], ["--batch", "0"]])
def test_profile_refuses_bad_numbers(tmp_path, capsys, flag):
    m = tmp_path / "m.safetensors"
    save(create("alexnet", width=0.125), m)
    out = tmp_path / "t.json"
    assert main(["profile", str(m), *flag, "-o", str(out)]) == 2
    assert ">= 1" in capsys.readouterr().err and not out.exists()
