"""compress with the user's own model class and task callbacks; the pruned model survives
any failure after fine-tuning."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qmixprune as q
import qmixprune.run.compress
from qmixprune.data import load_data
from qmixprune.distill import DistillConfig
from qmixprune.errors import UserError
from qmixprune.run.compress import CompressConfig, compress
from qmixprune.search import EnvConfig, SearchConfig

SMALL = CompressConfig(
    search=SearchConfig(episodes=2, env=EnvConfig(reward_batches=1, calib_batches=1)),
    distill=DistillConfig(epochs=1, batch_size=128),
    bench_runs=1,
    allow_untrained=True,
)


class UserNet(nn.Module):
    """A model class of the user's own (not from qmixprune.models)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.c1(x)))
        x = F.relu(self.bn2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _net():
    torch.manual_seed(0)
    return UserNet()


def test_user_class_saved_before_failing_stages(tmp_path, digits, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("qmixprune.deploy.export.export_onnx", boom)
    for name in ("plot_channels", "markdown_report"):
        monkeypatch.setattr(f"qmixprune.run.report.{name}", boom)
    from qmixprune.files import write_json

    def write_json_but_report(path, doc):
        return boom() if path.name == "report.json" else write_json(path, doc)

    monkeypatch.setattr("qmixprune.run.outputs.write_json", write_json_but_report)
    out = tmp_path / "o"
    with pytest.warns(RuntimeWarning) as caught:
        res = compress(_net(), digits, target_flops=0.5, config=SMALL, out=out, quiet=True)
    said = " ".join(str(w.message) for w in caught)
    for stage in ("ONNX export or benchmark", "plots", "report.json", "report.md"):
        assert f"{stage} skipped: RuntimeError: disk on fire" in said
    assert res.pruned["macs"] <= 0.5 * res.original["macs"]
    with pytest.raises(UserError, match="pass model="):
        q.load(out / "model.safetensors")
    restored = q.load(out / "model.safetensors", model=UserNet())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(restored(x), res.model.eval()(x))


def test_task_callbacks_drive_search_and_finetuning(tmp_path, digits):
    calls = {"evaluate": 0, "train_step": 0, "calib": 0}

    def evaluate(model):
        calls["evaluate"] += 1
        return -F.cross_entropy(model(x_val), y_val).item()

    def train_step(student, teacher, batch):
        calls["train_step"] += 1
        x, _ = batch
        with torch.no_grad():
            t = teacher(x)
        return F.mse_loss(student(x), t)  # logit matching, no labels

    def calib():
        for i in range(8):
            calls["calib"] += 1
            yield torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(i))

    x_val = torch.stack([digits.val[i][0] for i in range(64)])
    y_val = torch.stack([torch.as_tensor(digits.val[i][1]) for i in range(64)])
    res = compress(
        _net(),
        digits,
        target_flops=0.5,
        config=CompressConfig(**{**SMALL.__dict__, "export": False}),
        out=tmp_path / "o",
        quiet=True,
        score=evaluate,
        train_step=train_step,
        calib=calib(),
    )
    # one per batch of the epoch; calib read once (one batch: calib_batches=1)
    assert calls["train_step"] == len(digits.train) // 128
    assert calls["calib"] == 1
    # teacher + candidates of the search + one per epoch + the result
    assert calls["evaluate"] >= 4
    assert set(res.original) == {"macs", "params", "score"}
    assert res.pruned["score"] == pytest.approx(evaluate(res.model))
    assert "| | MACs | params | score |" in (tmp_path / "o" / "report.md").read_text()
    assert json.loads((tmp_path / "o" / "report.json").read_text())["pruned"]["score"] <= 0


def test_no_data(digits):
    def evaluate(model):
        return 0.0

    batches = [torch.randn(4, 3, 32, 32)]
    no_finetune = CompressConfig(**{**SMALL.__dict__, "distill": DistillConfig(epochs=0)})
    res = compress(_net(), None, 0.5, no_finetune, quiet=True, score=evaluate, calib=batches)
    assert res.pruned["macs"] <= 0.5 * res.original["macs"] and res.finetune == []
    with pytest.raises(UserError, match="unless both score= and calib="):
        compress(_net(), None, 0.5, no_finetune, quiet=True, score=evaluate)
    with pytest.raises(UserError, match="fine-tuning needs training data"):
        compress(_net(), None, 0.5, SMALL, quiet=True, score=evaluate, calib=batches)
