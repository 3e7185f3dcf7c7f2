"""Save a pruned model of the user's own class and restore it onto a fresh instance."""

import json
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from nets import Concat, Mixed, randomize_bn

import qmixprune as q
from qmixprune.cli import main
from qmixprune.errors import UserError
from qmixprune.pruning import PLAN_ATTR
from qmixprune.serialize import load_model_file, model_factory

X = torch.randn(2, 3, 8, 8)


class Net(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width, 3)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.bn(self.c1(x)))))
        return self.fc(x.mean((2, 3)))


def _fresh(cls, seed: int = 0):
    torch.manual_seed(seed)
    return randomize_bn(cls(), seed).eval()


@pytest.mark.parametrize("cls", [Mixed, Concat, Net])
def test_custom_round_trip(tmp_path, cls):
    base = _fresh(cls)
    pruned = q.prune(base, X, 0.5).eval()
    path = q.save(pruned, tmp_path / "m.safetensors")
    other = _fresh(cls, seed=1)  # another instance: its own random weights
    before = {k: v.clone() for k, v in other.state_dict().items()}
    restored = q.load(path, model=other)
    assert torch.equal(restored(X), pruned(X))
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())  # untouched
    assert getattr(restored, PLAN_ATTR) == getattr(pruned, PLAN_ATTR)
    # the restored model saves and restores again
    again = q.load(q.save(restored, tmp_path / "m2.safetensors"), model=_fresh(cls))
    assert torch.equal(again(X), pruned(X))


def test_without_model_says_pass_model(tmp_path):
    path = q.save(q.prune(_fresh(Net), X, 0.5), tmp_path / "m.safetensors")
    with pytest.raises(UserError, match=r"test_restore.Net\).*pass model="):
        q.load(path)


def test_plan_holds_original_indices_after_two_prunings(tmp_path):
    base = _fresh(Net)
    once = q.prune(base, X, 0.5)
    twice = q.prune(once, X, 0.5).eval()
    plan = getattr(twice, PLAN_ATTR)
    keep = plan["c1"]["keep"]
    assert plan["c1"]["channels"] == 8 and len(keep) == 2 == twice.c1.out_channels
    # the kept filters are the original's filters at those indices
    assert torch.equal(twice.c1.weight, base.c1.weight[keep])
    path = q.save(twice, tmp_path / "m.safetensors")
    meta = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])
    assert json.loads(meta["__metadata__"]["plan"])["c1"]["keep"] == keep
    assert torch.equal(q.load(path, model=Net())(X), twice(X))


def test_plan_that_does_not_fit(tmp_path):
    path = q.save(q.prune(_fresh(Net), X, 0.5), tmp_path / "m.safetensors")
    with pytest.raises(UserError, match=r"group 'c1' has 16 channels here but 8"):
        q.load(path, model=Net(width=16))
    with pytest.raises(UserError, match=r"no channel group 'c1'"):
        q.load(path, model=Concat())
    with pytest.raises(UserError, match="unpruned"):
        q.load(path, model=q.prune(Net(), X, 0.25))
    # an unpruned file onto a model with other weights: the weights name the problem
    plain = q.save(Net(), tmp_path / "plain.safetensors")
    with pytest.raises(UserError, match="weights do not fit Net"):
        q.load(plain, model=Net(width=4))


def test_tampered_custom_file(tmp_path):
    path = q.save(q.prune(_fresh(Net), X, 0.5), tmp_path / "m.safetensors")
    bad = bytearray(path.read_bytes())
    bad[-3] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(bad))
    with pytest.raises(UserError, match="corrupt"):
        q.load(tmp_path / "bad.safetensors", model=Net())


def test_changed_plan_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    path = q.save(q.prune(_fresh(Net), X, 0.5), tmp_path / "m.safetensors")
    head = path.read_bytes()
    meta = json.loads(head[8 : 8 + int.from_bytes(head[:8], "little")])["__metadata__"]
    plan = json.loads(meta["plan"])
    plan["c1"]["keep"] = list(range(len(plan["c1"]["keep"])))
    save_file(load_file(path), tmp_path / "bad.safetensors", {**meta, "plan": json.dumps(plan)})
    with pytest.raises(UserError, match="metadata .* was changed"):
        q.load(tmp_path / "bad.safetensors", model=Net())


def test_file_with_counts_only_still_loads(tmp_path):
    """Files written before plans carried indices hold kept counts."""
    from safetensors.torch import load_file, save_file

    from qmixprune.serialize import tensors_digest

    pruned = q.prune(q.models.create("vgg16", width=0.125), torch.randn(1, 3, 32, 32), 0.5)
    path = q.save(pruned.eval(), tmp_path / "m.safetensors")
    tensors = load_file(path)
    meta = {
        "format": "qmixprune/1",
        "arch": json.dumps(q.models.arch_spec(pruned)),
        "channels": json.dumps({k: len(v["keep"]) for k, v in getattr(pruned, PLAN_ATTR).items()}),
        "input_shape": "[3, 32, 32]",
        "digest": tensors_digest(tensors),
    }
    save_file(tensors, tmp_path / "old.safetensors", metadata=meta)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(q.load(tmp_path / "old.safetensors")(x), pruned(x))


def _user_package(tmp_path, monkeypatch):
    (tmp_path / "usernet.py").write_text(
        textwrap.dedent(
            """
            import torch.nn as nn

            class Small(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.c1 = nn.Conv2d(3, 8, 3, padding=1)
                    self.c2 = nn.Conv2d(8, 8, 3, padding=1)
                    self.fc = nn.Linear(8, 2)

                def forward(self, x):
                    return self.fc(self.c2(self.c1(x).relu()).relu().mean((2, 3)))

            def build():
                return Small()

            def not_a_model():
                return 3
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, "usernet", raising=False)


def test_model_factory_cli(tmp_path, monkeypatch, capsys):
    _user_package(tmp_path, monkeypatch)
    net = model_factory("usernet:build")()
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    assert main(["analyze", "sd.pt", "--model-factory", "usernet:build"]) == 0
    assert "2 of 3 groups prunable" in capsys.readouterr().out
    args = ["prune", "sd.pt", "--model-factory", "usernet:build", "--ratio", "0.5"]
    assert main([*args, "-o", "same.safetensors"]) == 0  # round_to 8 keeps all 8
    args += ["--round-to", "1"]
    assert main([*args, "-o", "p.safetensors"]) == 0
    capsys.readouterr()
    restored = load_model_file("p.safetensors", factory=model_factory("usernet:build"))
    x = torch.randn(1, 3, 32, 32)
    assert restored.c1.out_channels == 4
    assert torch.equal(restored(x), q.prune(net, x, 0.5)(x))
    assert main(["count", "p.safetensors", "--model-factory", "usernet:build"]) == 0
    assert main(["count", "p.safetensors"]) == 2
    assert "--model-factory" in capsys.readouterr().err
    assert main(["count", "vgg16", "--model-factory", "usernet:build"]) == 2
    assert "not the built-in name 'vgg16'" in capsys.readouterr().err
    for bad, says in [
        ("usernet", "pkg.module:function"),
        ("nosuchmod:build", "cannot import nosuchmod"),
        ("usernet:nothing", "no function nothing"),
        ("usernet:not_a_model", "returned int"),
    ]:
        assert main(["count", "p.safetensors", "--model-factory", bad]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.splitlines()) == 1, err


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx traces only its parts."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3)
        )
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.body(x)
        if y.sum() > 0:
            y = -y
        return self.head(y)


def test_named_parts_are_restored(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = q.prune(_fresh(Branchy), X, 0.5, parts=["body"]).eval()
    assert pruned.body[0].out_channels == 4
    path = q.save(pruned, tmp_path / "m.safetensors")
    head = path.read_bytes()
    meta = json.loads(head[8 : 8 + int.from_bytes(head[:8], "little")])["__metadata__"]
    assert json.loads(meta["parts"]) == ["body"]
    assert torch.equal(q.load(path, model=Branchy())(X), pruned(X))
