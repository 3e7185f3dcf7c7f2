import json

import pytest

from qmixprune import __version__, load
from qmixprune.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "prune" in capsys.readouterr().out


def test_analyze_count_prune(tmp_path, capsys):
    assert main(["analyze", "resnet56", "--width", "0.5"]) == 0
    assert "30 of 31 groups prunable" in capsys.readouterr().out
    assert main(["count", "vgg16"]) == 0
    assert "313,201,664" in capsys.readouterr().out
    out = tmp_path / "p.safetensors"
    assert main(["prune", "vgg16", "--width", "0.25", "--target-flops", "0.5", "-o", str(out)]) == 0
    assert load(out).features[0].out_channels < 16


def test_bad_input_gives_one_line_and_code_2(tmp_path, capsys):
    assert main(["count", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("qmixprune: error:")
        and "does not exist" in err
        and len(err.splitlines()) == 1
    )
    out = tmp_path / "p.safetensors"
    assert main(["prune", "vgg16", "--target-flops", "1.5", "-o", str(out)]) == 2
    assert not out.exists()


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pruned"]["macs"] <= 0.41 * report["original"]["macs"]
    assert 0 < report["pruned"]["test_acc"] <= 1
    load(out / "model.safetensors")
    assert main(["demo", "--quick", "--quiet", "-o", str(out)]) == 2  # refuses to overwrite


def test_search_command_writes_outputs_and_resumes(tmp_path, capsys):
    from qmixprune import save
    from qmixprune.models import create

    model = tmp_path / "m.safetensors"
    save(create("vgg16", width=0.125), model)
    out = tmp_path / "s"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("episodes: 4\nenv:\n  reward_batches: 1\n  calib_batches: 1\n")
    argv = [
        "search",
        str(model),
        "--config",
        str(cfg),
        "--target-flops",
        "0.5",
        "-o",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert 0.495 <= plan["macs_ratio"] <= 0.5
    assert all(len(g["indices"]) == g["kept"] for g in plan["groups"].values())
    assert len((out / "search_log.jsonl").read_text().splitlines()) == 4
    assert json.loads((out / "search_config.json").read_text())["env"]["target_flops"] == 0.5
    assert (out / "reward_curve.png").stat().st_size > 0
    assert main(argv) == 2  # an existing output is not clobbered
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # already complete: resumes to the same end


def test_search_bad_config_is_clear(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("episodez: 4\n")
    assert main(["search", "vgg16", "--config", str(cfg), "-o", str(tmp_path / "o")]) == 2
    assert "unknown key(s) ['episodez']" in capsys.readouterr().err
