import json
from dataclasses import replace

import pytest
import torch
from nets import fixed_timer

import qmixprune as q
from qmixprune.cli import main
from qmixprune.data import load_data
from qmixprune.distill import DistillConfig
from qmixprune.errors import UserError
from qmixprune.models import create
from qmixprune.run.compress import CompressConfig, compress
from qmixprune.search import EnvConfig, SearchConfig
from qmixprune.search.pick import PickConfig

SMALL = CompressConfig(
    search=SearchConfig(episodes=3, env=EnvConfig(reward_batches=1, calib_batches=1)),
    distill=DistillConfig(epochs=1, batch_size=128),
    pick=PickConfig(top_k=2, steps=1, val_batches=1),
    bench_runs=2,
    allow_untrained=True,  # an untrained model: these tests check the mechanics
)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    torch.manual_seed(0)
    q.save(create("vgg16", width=0.125), path)
    return path


def test_python_api_result_and_outputs(tmp_path, model_file):
    data = load_data("digits")
    res = compress(
        q.load(model_file), data, target_flops=0.5, config=SMALL, out=tmp_path / "o", quiet=True
    )
    assert res.pruned["macs"] <= 0.5 * res.original["macs"]
    out = tmp_path / "o"
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "plan.json",
        "model.onnx",
        "report.json",
        "report.md",
        "config.json",
        "channels.png",
        "reward_curve.png",
        "finetune_curve.png",
        "search_log.jsonl",
    } <= names
    from qmixprune.run.outdir import OUTPUTS

    assert names <= set(OUTPUTS)  # --overwrite clears exactly what a run writes
    rep = json.loads((out / "report.json").read_text())
    assert rep["target_flops"] == 0.5 and 0 <= rep["pruned"]["test_acc"] <= 1
    assert {"macs", "params", "test_acc"} <= set(rep["original"])
    assert rep["latency"]["results"][1]["model"] == "pruned"
    assert rep["versions"]["backend"] in ("native", "reference")
    assert rep["device"] == "cpu" == str(next(res.model.parameters()).device)
    loaded = q.load(out / "model.safetensors")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), res.model.eval()(x))
    assert json.loads((out / "config.json").read_text())["search"]["env"]["target_flops"] == 0.5


def _argv(model_file, out, *extra):
    return [
        "compress",
        str(model_file),
        "--target-flops",
        "0.5",
        "--episodes",
        "2",
        "--epochs",
        "1",
        "--no-export",
        "--quiet",
        "--allow-untrained",
        "-o",
        str(out),
        *extra,
    ]


def test_cli_refuses_existing_out_and_resumes_after_interrupt(tmp_path, model_file, monkeypatch):
    out = tmp_path / "o"
    import qmixprune.run.compress as pipeline

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "distill", interrupted)
    assert main(_argv(model_file, out)) == 130
    assert not (out / "report.json").exists() and not (out / "model.safetensors").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert main(_argv(model_file, out)) == 2  # refuses: neither --overwrite nor --resume
    assert main(_argv(model_file, out, "--resume")) == 0
    assert json.loads((out / "report.json").read_text())["search"]["episodes"] == 2
    assert main(_argv(model_file, out, "--overwrite")) == 0


@pytest.mark.parametrize(
    "argv_edit,message",
    [
        (lambda a: a[:1] + ["{junk}"] + a[2:], "neither a PyTorch file nor a pickle"),
        (lambda a: a + ["--target-flops", "1.5"], "(0, 1)"),
        (lambda a: a + ["--target-flops", "0.01", "--min-channels", "4"], "unreachable"),
        (lambda a: a + ["--data", "imagefolder", "--data-dir", "{empty}"], "class folder"),
        (lambda a: a[:-1] + ["{file}/sub"], "cannot write"),
        (lambda a: a[:1] + ["{sd}"] + a[2:] + ["--arch", "resnet56"], "does not match"),
    ],
)
def test_bad_input_one_line(tmp_path, model_file, capsys, argv_edit, message):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04garbage")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    torch.save(create("vgg16", width=0.125).state_dict(), tmp_path / "sd.pt")
    subs = {
        "{junk}": str(junk),
        "{empty}": str(tmp_path / "empty"),
        "{file}": str(tmp_path / "file"),
        "{sd}": str(tmp_path / "sd.pt"),
    }
    argv = [subs.get(a, a) for a in argv_edit(_argv(model_file, tmp_path / "o"))]
    argv = [a.replace("{file}", str(tmp_path / "file")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_api_rejects_bad_target(model_file):
    with pytest.raises(UserError, match="target_flops"):
        compress(q.load(model_file), load_data("digits"), target_flops=0.0, config=SMALL)


def test_latency_only_target_reports_prediction(tmp_path, model_file):
    from dataclasses import replace

    from qmixprune import analyze
    from qmixprune.budget import CostModel
    from qmixprune.deploy.profile import profile

    model = q.load(model_file)
    x = torch.zeros(1, 3, 32, 32)
    cost = CostModel(model, analyze(model, x), x)
    table = profile(model, cost, x, threads=1, timer=fixed_timer)  # timings fixed, not measured
    cfg = replace(SMALL, target_flops=None, target_latency=0.9)
    out = tmp_path / "o"
    res = compress(model, load_data("digits"), config=cfg, out=out, quiet=True, latency_table=table)
    rep = json.loads((out / "report.json").read_text())
    assert rep["target_flops"] is None and rep["target_latency"] == 0.9
    assert rep["search"]["predicted_latency"] <= 0.9
    assert rep["search"]["round_to"] >= 1 and res.pruned["macs"] < res.original["macs"]
    assert rep["latency"]["threads"] == 1  # timed with the table's thread count
    md = (out / "report.md").read_text()
    assert "0.90 of the measured latency" in md and "Predicted latency" in md


def _count_calls(monkeypatch, module, name: str, calls: dict) -> None:
    real = getattr(module, name)

    def counted(*a, **k):
        calls[name] = calls.get(name, 0) + 1
        return real(*a, **k)

    monkeypatch.setattr(module, name, counted)


@pytest.mark.parametrize("via", ["cli", "api"])
def test_one_run_checks_once_and_runs_the_teacher_at_most_twice_before_the_search(
    via, tmp_path, model_file, monkeypatch
):
    import qmixprune.run.compress as stages
    import qmixprune.run.preflight as preflight

    calls: dict = {}
    _count_calls(monkeypatch, stages, "check_compress", calls)  # the API's name for it
    _count_calls(monkeypatch, preflight, "check_compress", calls)  # the CLI's
    for name in ("check_classes", "check_same_config", "resolve", "accuracy"):
        _count_calls(monkeypatch, preflight, name, calls)
    teacher = q.load(model_file)
    singles = []  # the teacher's forward passes on one sample (the checks and analysis)
    teacher.register_forward_hook(lambda m, i, o: singles.append(i[0].shape[0] == 1))
    monkeypatch.setattr("qmixprune.cli.run.load_model", lambda args, check=True: (teacher, None))
    real_search = stages.search
    before = []

    def search(*a, **k):
        before.append(sum(singles))
        return real_search(*a, **k)

    monkeypatch.setattr(stages, "search", search)
    out = tmp_path / "o"
    if via == "cli":
        args = ["compress", str(model_file), "--target-flops", "0.5", "--episodes", "2"]
        args += ["--epochs", "0", "--no-export", "--allow-untrained", "--quiet", "-o", str(out)]
        assert main(args) == 0
    else:
        cfg = replace(SMALL, export=False, distill=replace(SMALL.distill, epochs=0))
        compress(teacher, load_data("digits"), 0.5, cfg, out=out, quiet=True)
    assert calls.get("check_compress") == 1
    assert calls["check_classes"] == calls["resolve"] == calls["accuracy"] == 1
    assert "check_same_config" not in calls  # not resuming
    # measured once (layers, MACs, outputs); the graph capture may run it once more; the
    # search's channels-last probe runs on calibration batches, not on a single sample
    assert len(before) == 1 and 1 <= before[0] <= 2, before


def test_unreachable_target_leaves_out_untouched(tmp_path, model_file, capsys):
    out = tmp_path / "o3"
    args = ["compress", str(model_file), "--target-flops", "0.0005", "--allow-untrained"]
    assert main([*args, "--quiet", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "target 0.0005 of the MACs is unreachable" in err, err  # the number as given
    assert not out.exists()


def test_fixed_plan_skips_the_search_and_says_its_source(tmp_path, model_file):
    cfg = replace(SMALL, plan="uniform", export=False, distill=replace(SMALL.distill, epochs=0))
    out = tmp_path / "u"
    res = compress(q.load(model_file), load_data("digits"), 0.5, cfg, out=out, quiet=True)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["source"] == "uniform" and plan["pick"] is None and plan["episodes"] == 0
    assert res.search["source"] == "uniform" and res.search["evaluations"] == 1
    assert not (out / "search_log.jsonl").exists()
    with pytest.raises(UserError, match="plan must be one of"):
        compress(q.load(model_file), load_data("digits"), 0.5, replace(cfg, plan="best"))


def test_final_pick_is_the_plan_fine_tuned_and_a_low_tau_is_reported(
    tmp_path, model_file, monkeypatch
):
    from qmixprune.search import pick as pick_module

    # distillation skipped, the smallest plan scored best, and a tau as the benchmark saw it
    monkeypatch.setattr(pick_module, "short_distill", lambda s, t, b, n, lr: s)
    monkeypatch.setattr(pick_module, "kendall_tau", lambda a, b: -0.24)
    monkeypatch.setattr(
        pick_module, "val_accuracy", lambda m, val: -sum(p.numel() for p in m.parameters())
    )
    cfg = replace(
        SMALL,
        export=False,
        distill=replace(SMALL.distill, epochs=0),
        search=replace(SMALL.search, episodes=6),
        pick=PickConfig(top_k=4, steps=1, val_batches=1),
    )
    out = tmp_path / "p"
    res = compress(q.load(model_file), load_data("digits"), 0.5, cfg, out=out, quiet=True)
    plan = json.loads((out / "plan.json").read_text())
    pick = res.search["pick"]
    assert plan["source"] == res.search["source"] == "search+pick"
    assert plan["pick"]["index"] == pick["index"] and len(pick["candidates"]) >= 2
    winner = pick["candidates"][pick["index"]]
    assert all(
        res.channels[g]["after"] == winner["counts"][g] == plan["groups"][g]["kept"]
        for g in winner["counts"]
    )
    # plan.json says the winner's search reward, not the search's best
    assert plan["reward"] == winner["search_reward"]
    assert pick["tau"] == -0.24
    assert any("did not predict" in w and "tau -0.24" in w for w in res.warnings)
    assert "did not predict" in (out / "report.md").read_text()
    nopick = compress(
        q.load(model_file), load_data("digits"), 0.5, replace(cfg, pick=PickConfig(enabled=False))
    )
    assert nopick.search["source"] == "search" and nopick.search["pick"] is None
