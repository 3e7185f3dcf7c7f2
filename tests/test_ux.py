"""A new user's first hour: inputs stated and checked, presets, help, report, checkpoints."""

import argparse
import json

import pytest
import torch
import torch.nn as nn

import qmixprune as q
from qmixprune.cli import main, parser
from qmixprune.cli.run import compress_config
from qmixprune.data import load_data
from qmixprune.errors import UserError
from qmixprune.inputs import NORMS, check_forward, default_size, parse_norm
from qmixprune.models import create
from qmixprune.run.preflight import check_teacher
from qmixprune.run.report import alignment_warning, markdown_report


class SizeBound(nn.Module):
    """Runs at one input size only, like a ViT at its patch grid."""

    def __init__(self, size: int, declare: bool) -> None:
        super().__init__()
        self.size = size
        self.fc = nn.Linear(3 * size * size, 2)
        if declare:
            self.image_size = size

    def forward(self, x):
        torch._assert(x.shape[-1] == self.size, "wrong image size")
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("size,declare", [(16, True), (28, False)])  # declared, or found
def test_shape_error_names_the_size_the_model_runs_at(size, declare):
    model = SizeBound(size, declare)
    with pytest.raises(UserError, match=f"pass --input-size {size}") as e:
        check_forward(model, torch.zeros(1, 3, 32, 32))
    assert "(1, 3, 32, 32)" in str(e.value) and "\n" not in str(e.value)
    check_forward(model, torch.zeros(1, 3, size, size))


def test_default_input_size():
    assert default_size(SizeBound(16, True), None) == 16
    assert default_size(nn.Linear(2, 2), "torchvision:resnet18") == 224
    assert default_size(nn.Linear(2, 2), "timm:resnet18") == 224
    assert default_size(nn.Linear(2, 2), "vgg16") == 32


def test_norm_presets_and_numbers():
    assert parse_norm(None, None) is None
    assert parse_norm("imagenet", None) == NORMS["imagenet"]
    assert parse_norm("0.5", "0.25") == ((0.5,) * 3, (0.25,) * 3)
    assert parse_norm("0.1,0.2,0.3", "cifar10") == ((0.1, 0.2, 0.3), NORMS["cifar10"][1])
    for mean, std, msg in [
        ("0.5", None, "preset name"),
        ("a,b", "1", "comma-separated"),
        ("0.5", "0", "> 0"),
        ("1,2", "1", "1 or 3 values"),
    ]:
        with pytest.raises(UserError, match=msg):
            parse_norm(mean, std)


def test_data_states_its_normalisation(tmp_path):
    d = load_data("digits")
    assert d.norm_source == "digits' own statistics" and len(d.mean) == 3
    g = load_data("digits", norm=NORMS["half"])
    assert g.norm_source == "given" and g.mean == (0.5, 0.5, 0.5)
    # the same image, normalised as asked: (x - 0.5) / 0.5 maps [0, 1] to [-1, 1]
    raw = d.train[0][0] * torch.tensor(d.std).view(3, 1, 1) + torch.tensor(d.mean).view(3, 1, 1)
    assert torch.allclose(g.train[0][0], (raw - 0.5) / 0.5, atol=1e-4)
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / split / cls / "0.png")
    f = load_data("imagefolder", data_dir=tmp_path, image_size=8)
    assert f.mean == NORMS["imagenet"][0] and "ImageNet" in f.norm_source
    white = (1 - torch.tensor(NORMS["imagenet"][0])) / torch.tensor(NORMS["imagenet"][1])
    assert torch.allclose(f.test[0][0][:, 0, 0], white, atol=1e-5)


def test_teacher_at_chance_is_refused():
    check_teacher(0.9, 10, 359)
    with pytest.raises(UserError, match="chance level for 10 classes") as e:
        check_teacher(0.09, 10, 359)
    assert "--allow-untrained" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError):
        check_teacher(0.13, 10, 359)  # within 3 standard errors of 0.1 on 359 images
    check_teacher(0.6, 2, 1000)


def test_cli_refuses_an_untrained_teacher_before_touching_out(tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    torch.manual_seed(0)
    q.save(create("vgg16", width=0.125), model)
    out = tmp_path / "out"
    assert main(["compress", str(model), "--quiet", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "chance level" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def _args(*argv):
    return parser().parse_args(["compress", "m.pt", "-o", "o", *argv])


def test_presets_layer_under_config_and_flags(tmp_path):
    quick = compress_config(_args("--preset", "quick"))
    assert quick.search.episodes == 40 and quick.distill.epochs == 3
    assert (quick.pick.top_k, quick.pick.steps) == (4, 10)
    assert (
        compress_config(_args()).search.episodes
        == compress_config(_args("--preset", "default")).search.episodes
    )
    assert compress_config(_args("--preset", "quick", "--episodes", "7")).search.episodes == 7
    assert compress_config(_args("--preset", "quick", "--patience", "9")).search.patience == 9
    cfg = tmp_path / "c.yaml"
    cfg.write_text("distill:\n  epochs: 2\n")
    both = compress_config(_args("--preset", "thorough", "--config", str(cfg)))
    assert both.distill.epochs == 2 and both.search.episodes == 400
    flags = compress_config(_args("--allow-untrained", "--keep-checkpoints"))
    assert flags.allow_untrained and flags.keep_checkpoints


def _options(p: argparse.ArgumentParser):
    for sub in p._subparsers._group_actions[0].choices.values():
        for action in sub._actions:
            if action.option_strings and action.help is not argparse.SUPPRESS:
                yield sub.prog, action


def test_every_option_has_help_and_help_shows_defaults(capsys):
    missing = [f"{prog} {a.option_strings[0]}" for prog, a in _options(parser()) if not a.help]
    assert not missing, missing
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--preset" in text and "--allow-untrained" in text and "--keep-checkpoints" in text
    assert "(default: 200 unless --config or --preset sets it)" in text  # episodes
    assert "(default: digits)" in text and "8 for a FLOPs target" in text


def test_count_shows_input_and_params_that_add_up(capsys):
    assert main(["count", "vgg16", "--width", "0.25"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("input 1x3x32x32")
    total = sum(p.numel() for p in create("vgg16", width=0.25).parameters())
    rows = [ln for ln in lines[2:-1]]
    assert sum(int(ln.split()[-1].replace(",", "")) for ln in rows) == total
    assert lines[-1].split()[-1] == f"{total:,}"


def _report(after: int, round_to: int | None) -> dict:
    return {
        "target_flops": 0.5,
        "seed": 0,
        "original": {"macs": 100, "params": 10, "test_acc": 0.9},
        "pruned": {"macs": 50, "params": 5, "test_acc": 0.88},
        "search": {"reward": 0.8, "evaluations": 3, "seconds": 1.0, "round_to": round_to},
        "channels": {"conv1": {"before": 64, "after": after}, "conv2": {"before": 3, "after": 3}},
        "input": {"shape": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "source": "given"},
    }


def test_report_embeds_plots_states_inputs_and_warns_on_unaligned_widths():
    plots = [("channels.png", "Channels"), ("reward_curve.png", "Search reward")]
    md = markdown_report(_report(32, 8), plots)
    assert "![Channels](channels.png)" in md and "![Search reward](reward_curve.png)" in md
    assert "finetune_curve.png" not in md
    assert "Input: 3x32x32, normalised with mean (0.5, 0.5, 0.5)" in md
    assert "Warning" not in md
    md = markdown_report(_report(4, 1))
    assert "**Warning**: 1 of 1 pruned groups" in md and "--round-to 8" in md
    rep = _report(32, 8)
    rep["search"]["early_stop"] = {"episode": 9, "best_evaluation": 4, "patience": 5}
    assert "stopped early at episode 9" in markdown_report(rep)
    assert "multiples of 16" in alignment_warning(_report(40, 16)["channels"], 16)
    assert alignment_warning(_report(48, 16)["channels"], 16) is None


def test_plots_carry_titles(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from qmixprune.run import report

    titles = []
    real = report._save

    def save(plt, fig, path):
        titles.append(fig.axes[0].get_title())
        return real(plt, fig, path)

    monkeypatch.setattr(report, "_save", save)
    report.plot_rewards([{"episode": 1, "reward": 0.5, "best": 0.5}], tmp_path / "r.png")
    report.plot_finetune([{"epoch": 1, "val_acc": 0.5}], tmp_path / "f.png")
    report.plot_channels({"a": 4}, {"a": 2}, tmp_path / "c.png")
    assert len(titles) == 3 and all(titles)


def test_compress_removes_checkpoints_after_success_unless_kept(tmp_path, monkeypatch):
    from dataclasses import replace

    from qmixprune.distill import DistillConfig
    from qmixprune.run import compress as pipeline
    from qmixprune.run.compress import CompressConfig, compress
    from qmixprune.search import EnvConfig, SearchConfig

    cfg = CompressConfig(
        search=SearchConfig(episodes=1, env=EnvConfig(reward_batches=1, calib_batches=1)),
        distill=DistillConfig(epochs=1, batch_size=128),
        export=False,
        allow_untrained=True,
    )
    torch.manual_seed(0)
    model = create("vgg16", width=0.125)
    data = load_data("digits")
    from qmixprune.run import preflight

    scored = []
    real = pipeline.accuracy
    for module in (pipeline, preflight):  # the teacher in the checks, the student after
        monkeypatch.setattr(module, "accuracy", lambda m, d: scored.append(m) or real(m, d))
    for keep in (False, True):
        out = tmp_path / str(keep)
        out.mkdir()
        known = 0.125 if keep else None  # measured by the caller (the CLI's teacher check)
        res = compress(
            model,
            data,
            config=replace(cfg, keep_checkpoints=keep),
            out=out,
            quiet=True,
            teacher_score=known,
        )
        # the teacher is scored once: by compress, or by the caller who says so
        assert sum(m is model for m in scored) == 1
        assert keep is False or res.original["test_acc"] == 0.125
        names = {p.name for p in out.iterdir()}
        assert ("search_checkpoint.pt" in names) == keep
        assert ("distill_checkpoint.pt" in names) == keep
        assert "model.safetensors" in names
    assert json.loads((out / "report.json").read_text())["input"]["shape"] == [3, 32, 32]
    assert res.input["source"] == "digits' own statistics"
    # allowed, but said: the accuracies of an untrained model compare noise
    assert "at chance level" in res.warnings[0]
    assert "at chance level" in (out / "report.md").read_text()
