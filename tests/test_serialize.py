import pytest
import torch

import qmixprune as q
from qmixprune.errors import UserError
from qmixprune.models import create

X = torch.randn(2, 3, 32, 32)


@pytest.fixture
def pruned():
    m = create("resnet56", width=0.5).eval()
    return q.prune(m, X, 0.5, round_to=4).eval()


def test_round_trip_exact(tmp_path, pruned):
    path = q.save(pruned, tmp_path / "m.safetensors")
    loaded = q.load(path)
    assert torch.equal(loaded(X), pruned(X))
    # and it can be pruned again, then saved and loaded again
    again = q.prune(loaded, X, 0.25)
    torch.testing.assert_close(
        q.load(q.save(again, tmp_path / "m2.safetensors"))(X), again.eval()(X)
    )


def test_no_pickle_in_file(tmp_path, pruned):
    data = q.save(pruned, tmp_path / "m.safetensors").read_bytes()
    assert b"\x80\x04" not in data[:64] and data[8:9] == b"{"


def test_truncated_and_tampered(tmp_path, pruned):
    path = q.save(pruned, tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a valid qmixprune model"):
        q.load(tmp_path / "cut.safetensors")
    bad = bytearray(data)
    bad[-5] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(bad))
    with pytest.raises(UserError, match="corrupt"):
        q.load(tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match="does not exist"):
        q.load(tmp_path / "missing.safetensors")


def test_foreign_model_needs_model_on_load(tmp_path):
    lin = torch.nn.Linear(2, 2)
    path = q.save(lin, tmp_path / "x.safetensors")
    with pytest.raises(UserError, match=r"torch.nn.modules.linear.Linear.*pass model="):
        q.load(path)
    restored = q.load(path, model=torch.nn.Linear(2, 2))
    assert torch.equal(restored.weight, lin.weight)


def test_save_is_atomic(tmp_path, pruned, monkeypatch):
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"old")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        q.save(pruned, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_user_files(tmp_path):
    m = create("vgg16", width=0.25).eval()
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    torch.save({"state_dict": m.state_dict()}, tmp_path / "ckpt.pt")
    for f in ("sd.pt", "ckpt.pt"):
        loaded = q.load_model_file(tmp_path / f, arch="vgg16", width=0.25)
        assert torch.equal(loaded(X), m(X))
    with pytest.raises(UserError, match="--arch"):
        q.load_model_file(tmp_path / "sd.pt")
    with pytest.raises(UserError, match="does not match architecture 'vgg16'"):
        q.load_model_file(tmp_path / "sd.pt", arch="vgg16", width=0.5)
    torch.save(m, tmp_path / "whole.pt")
    with pytest.raises(UserError, match="--trust-pickle"):
        q.load_model_file(tmp_path / "whole.pt")
    assert torch.equal(q.load_model_file(tmp_path / "whole.pt", trust_pickle=True)(X), m(X))
    torch.jit.trace(m, X).save(str(tmp_path / "ts.pt"))
    with pytest.raises(UserError, match="TorchScript.*--trust-pickle"):  # a program too
        q.load_model_file(tmp_path / "ts.pt")
    ts = q.load_model_file(tmp_path / "ts.pt", trust_pickle=True)
    assert isinstance(ts, torch.jit.ScriptModule) and torch.allclose(ts(X), m(X))
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    with pytest.raises(UserError):
        q.load_model_file(tmp_path / "junk.pt")
