import json

import pytest
import torch

from qmixprune import analyze, apply_plan, save
from qmixprune.budget import Budget, CostModel
from qmixprune.cli import main
from qmixprune.data import load_data
from qmixprune.errors import UserError
from qmixprune.latency import LatencyModel, load_table, profile
from qmixprune.models import create
from qmixprune.pruning import plan_for_counts
from qmixprune.search import EnvConfig, build_env

X = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def setup():
    model = create("vgg16", width=0.25).eval()
    graph = analyze(model, X)
    cost = CostModel(model, graph, X)
    table = profile(model, cost, X, threads=1, runs=3, grid=(0.5, 1.0))
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
    both = Budget(cost, 0.3, env.latency, 0.9)
    assert both.load(counts) > 1.0  # the FLOPs target binds here
    pruned = apply_plan(model, graph, plan_for_counts(graph, counts))
    assert pruned(X).shape == (1, 10)


def test_profile_cli_and_bad_tables(tmp_path, capsys):
    m = tmp_path / "m.safetensors"
    save(create("alexnet", width=0.125), m)
    table = tmp_path / "t.json"
    assert main(["profile", str(m), "--runs", "2", "--threads", "1", "-o", str(table)]) == 0
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
        "0.6",
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
    assert all(e["latency"] <= 0.6 and "macs" in e for e in log)
