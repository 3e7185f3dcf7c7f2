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

SMALL = CompressConfig(
    search=SearchConfig(episodes=3, env=EnvConfig(reward_batches=1, calib_batches=1)),
    distill=DistillConfig(epochs=1, batch_size=128),
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
