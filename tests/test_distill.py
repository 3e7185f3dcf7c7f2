import copy
import os
import socket
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from qmixprune import analyze, apply_plan, make_plan
from qmixprune.data import load_data
from qmixprune.distill import DistillConfig, distill, kd_loss
from qmixprune.errors import UserError
from qmixprune.models import create
from qmixprune.train import accuracy


def test_kd_loss_terms():
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert torch.allclose(kd_loss(s, t, y, 4.0, 0.0), F.cross_entropy(s, y))
    same = kd_loss(s, s, y, 4.0, 1.0)
    assert same.abs() < 1e-6  # no soft-target gap: nothing to learn from the teacher
    assert kd_loss(s, t, y, 4.0, 1.0) > 0


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = load_data("digits", seed=0)
    data.train = torch.utils.data.Subset(data.train, range(256))
    teacher = create("vgg16", width=0.125).eval()
    x = torch.zeros(1, *data.input_shape)
    graph = analyze(teacher, x)
    student = apply_plan(teacher, graph, make_plan(teacher, graph, 0.5))
    return teacher, student, data, graph


def test_best_on_val_is_kept_and_history(setup):
    teacher, student, data, _ = setup
    before = accuracy(student, data.val)
    s, hist = distill(student, teacher, data, DistillConfig(epochs=2, batch_size=32, lr=0.05))
    assert [h["epoch"] for h in hist] == [1, 2]
    assert accuracy(s, data.val) == max(before, *(h["val_acc"] for h in hist))


def test_fine_tuning_that_only_hurts_returns_the_student_unchanged(setup):
    teacher, student, data, _ = setup
    # the fixture's teacher is untrained: cross-entropy (alpha 0) gets the student off chance
    cfg = DistillConfig(epochs=3, batch_size=32, lr=0.05, alpha=0.0)
    student, _ = distill(copy.deepcopy(student), teacher, data, cfg)
    incoming = {k: v.clone() for k, v in student.state_dict().items()}
    # a learning rate this high wrecks the student every epoch
    cfg = DistillConfig(epochs=2, batch_size=32, lr=50.0, alpha=0.0)
    s, hist = distill(student, teacher, data, cfg)
    assert all(h["val_acc"] < accuracy(s, data.val) for h in hist)
    for k, v in s.state_dict().items():
        assert torch.equal(v, incoming[k])


def test_resume_matches_uninterrupted(setup, tmp_path):
    teacher, student, data, _ = setup
    cfg = DistillConfig(epochs=2, batch_size=32, lr=0.05, seed=1)
    full, _ = distill(student, teacher, data, cfg)

    class Stop(Exception):
        pass

    def stop(entry):
        raise Stop

    with pytest.raises(Stop):
        distill(student, teacher, data, cfg, tmp_path / "ckpt.pt", on_epoch=stop)
    resumed, hist = distill(student, teacher, data, cfg, tmp_path / "ckpt.pt", resume=True)
    assert len(hist) == 2
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_feature_distillation_adds_its_term_and_bad_config(setup):
    teacher, student, data, graph = setup
    kept = [s for s in graph.slots if s.module == "features.40"]
    assert kept
    idx = torch.arange(student.features[40].out_channels)
    # a step too small to move the weights: both runs see the same batches and the same KD
    # loss, so the epoch's mean loss differs by the feature term alone
    plain = DistillConfig(epochs=1, batch_size=32, lr=1e-12, seed=0)
    with_features = replace(plain, feature_weight=1.0)
    _, base = distill(copy.deepcopy(student), teacher, data, plain)
    feats = {"features.40": idx}
    s, feat = distill(copy.deepcopy(student), teacher, data, with_features, features=feats)
    assert feat[0]["loss"] > base[0]["loss"] + 1e-3  # the MSE of unmatched features: > 0
    _, again = distill(copy.deepcopy(student), teacher, data, plain)
    assert again[0]["loss"] == pytest.approx(base[0]["loss"], rel=1e-6)  # nothing else differs
    hooked = [m for m in (*s.modules(), *teacher.modules()) if m._forward_hooks]
    assert not hooked  # the capture hooks are gone with the run
    with pytest.raises(UserError, match="needs layers"):
        distill(student, teacher, data, with_features)
    with pytest.raises(UserError, match="alpha"):
        distill(student, teacher, data, DistillConfig(alpha=2.0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    teacher, student, data, _ = _setup_plain()
    # batch_size is the global batch: 16 per rank here
    s, hist = distill(student, teacher, data, DistillConfig(epochs=2, batch_size=32, lr=0.05))
    torch.save({"state": s.state_dict(), "acc": hist[-1]["val_acc"]}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _setup_plain():
    torch.manual_seed(0)
    data = load_data("digits", seed=0)
    data.train = torch.utils.data.Subset(data.train, range(256))
    teacher = create("vgg16", width=0.125).eval()
    graph = analyze(teacher, torch.zeros(1, *data.input_shape))
    return teacher, apply_plan(teacher, graph, make_plan(teacher, graph, 0.5)), data, graph


def test_distributed_gloo_two_ranks_agree(tmp_path):
    import torch.multiprocessing as mp

    os.environ.pop("WORLD_SIZE", None)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    teacher, student, data, _ = _setup_plain()
    _, hist = distill(student, teacher, data, DistillConfig(epochs=2, batch_size=32, lr=0.05))
    # the same global batch, lr and number of steps as one process: the same accuracy class
    assert abs(r0["acc"] - hist[-1]["val_acc"]) < 0.1


def test_custom_step_and_evaluate_pick_the_best_epoch(setup):
    teacher, student, data, _ = setup
    data = copy.copy(data)
    data.train = torch.utils.data.Subset(data.train, range(64))
    seen = []

    def step(model, teach, batch):
        x, y = batch
        seen.append((x.device, y.device))
        return F.cross_entropy(model(x), y)

    # higher is better; all negative; the first scores the student as it came in
    scores = iter([-5.0, -3.0, -1.0, -2.0])
    states = []

    def score(m):
        assert not m.training
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)

    cfg = DistillConfig(epochs=3, batch_size=32, lr=0.05)
    s, hist = distill(student, teacher, data, cfg, train_step=step, score=score)
    assert [h["val"] for h in hist] == [-3.0, -1.0, -2.0] == [h["val_acc"] for h in hist]
    assert len(seen) == 3 * 2 and all(d == (torch.device("cpu"),) * 2 for d in seen)
    for k, v in s.state_dict().items():  # the second epoch's weights were kept
        assert torch.equal(v, states[2][k]), k


def test_global_batch_split_and_amp_dtype(monkeypatch):
    from qmixprune.distill import amp_dtype, per_rank_batch

    assert per_rank_batch(64, 1) == 64 and per_rank_batch(64, 4) == 16
    with pytest.raises(UserError, match="multiple of 3"):
        per_rank_batch(64, 3)
    monkeypatch.setenv("WORLD_SIZE", "3")  # torchrun's, checked before any work
    with pytest.raises(UserError, match="multiple of 3"):
        DistillConfig(batch_size=64).validate()
    DistillConfig(batch_size=63).validate()
    monkeypatch.delenv("WORLD_SIZE")
    assert amp_dtype(torch.device("cpu")) is None
    # asked of the model's device, not the current one: cuda:0 a Turing, cuda:1 an Ampere
    capability = {0: (7, 5), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: capability[d.index])
    ampere, turing = torch.device("cuda", 1), torch.device("cuda", 0)
    assert amp_dtype(ampere) == torch.bfloat16 and amp_dtype(ampere, enabled=False) is None
    assert amp_dtype(turing) == torch.float16


def test_augment_same_draws_on_any_device():
    from qmixprune.train import augment

    x = torch.randn(4, 3, 8, 8)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x.to("meta"), torch.Generator().manual_seed(0))  # runs the device path
    assert b.device.type == "meta" and b.shape == a.shape


def test_distill_binds_the_students_gpu(monkeypatch):
    """Issue 24 (13): pinned-memory threads and caching allocators use the current device;
    without binding it, ``--device cuda:1`` opened a context on GPU 0."""
    import contextlib

    from qmixprune.device import device_context

    entered = []

    @contextlib.contextmanager
    def fake(d):
        entered.append(d)
        yield

    monkeypatch.setattr(torch.cuda, "device", fake)
    with device_context(torch.device("cuda", 1)):
        pass
    with device_context(torch.device("cpu")):
        pass
    assert entered == [torch.device("cuda", 1)]


def test_distill_runs_inside_its_devices_context(setup, monkeypatch):
    import contextlib

    import qmixprune.distill as mod

    teacher, student, data, _ = setup
    seen = []

    @contextlib.contextmanager
    def spy(device):
        seen.append(device)
        yield

    monkeypatch.setattr(mod, "device_context", spy)
    cfg = DistillConfig(epochs=0, batch_size=32)
    distill(copy.deepcopy(student), teacher, data, cfg, device=torch.device("cpu"))
    assert seen == [torch.device("cpu")]
