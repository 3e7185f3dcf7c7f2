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
