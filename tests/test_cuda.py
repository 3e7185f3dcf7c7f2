"""The GPU path, run where a CUDA GPU is visible (skipped otherwise): native kernels against
the reference on the GPU, pruning on the GPU, one AMP distillation epoch, and compress end to
end with every stage on the GPU. ``benchmarks/gpu_check.py`` runs the wider acceptance check."""

import json

import pytest
import torch

from qmixprune import analyze, apply_plan, make_plan, native, ops
from qmixprune.data import load_data
from qmixprune.device import resolve
from qmixprune.distill import DistillConfig, distill
from qmixprune.models import create

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible"),
]


@pytest.fixture
def cuda():
    return resolve("cuda")


def test_native_ops_match_the_reference_on_the_gpu(cuda):
    if not native.cuda_built():
        pytest.skip(f"CUDA kernels not built: {native.why_not('cuda')}")
    g = torch.Generator().manual_seed(0)
    ws = [
        torch.randn(64, 3, 3, 3, generator=g).to(cuda),
        torch.randn(10, 512, generator=g).to(cuda),
    ]
    for p in (1, 2):
        for a, b in zip(ops.filter_norms(ws, p, True), ops.filter_norms(ws, p, False), strict=True):
            assert a.device == cuda
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(ops.fpgm(ws, True), ops.fpgm(ws, False), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))
    act = torch.relu(torch.randn(8, 16, 5, 5, generator=g)).to(cuda)
    sums = [torch.zeros(16, dtype=torch.float64, device=cuda) for _ in range(2)]
    zeros = [torch.zeros(16, dtype=torch.long, device=cuda) for _ in range(2)]
    ops.channel_stats_(act, sums[0], zeros[0], True)
    ops.channel_stats_(act, sums[1], zeros[1], False)
    torch.testing.assert_close(sums[0], sums[1])
    assert torch.equal(zeros[0], zeros[1])
    rows, cols = [torch.tensor([5, 0, 2], device=cuda)], [torch.tensor([1], device=cuda)]
    a = ops.gather_channels(ws[:1], rows, cols, True)[0]
    assert torch.equal(a, ops.gather_channels(ws[:1], rows, cols, False)[0])


def test_pruning_on_the_gpu_equals_the_cpu(cuda):
    m = create("resnet56", width=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    g = analyze(m, x)
    plan = make_plan(m, g, 0.5, importance="l1")  # float64 sums: the same ranking on both
    cpu = apply_plan(m, g, plan)
    gpu_model = m.to(cuda)
    assert make_plan(gpu_model, g, 0.5, importance="l1") == plan
    gpu = apply_plan(gpu_model, g, plan)
    for (k, a), (_, b) in zip(cpu.state_dict().items(), gpu.state_dict().items(), strict=True):
        assert b.device == cuda and torch.equal(a, b.cpu()), k


@pytest.mark.parametrize("amp", [True, False])
def test_distill_epoch_on_the_gpu(cuda, amp):
    data = load_data("digits", seed=0)
    data.train = torch.utils.data.Subset(data.train, range(256))
    teacher = create("vgg16", width=0.125).eval()
    g = analyze(teacher, torch.zeros(1, 3, 32, 32))
    student = apply_plan(teacher, g, make_plan(teacher, g, 0.5))
    cfg = DistillConfig(epochs=1, batch_size=64, amp=amp)
    s, hist = distill(student, teacher, data, cfg, device=cuda)
    assert next(s.parameters()).device == cuda and 0 <= hist[0]["val_acc"] <= 1
    assert hist[0]["loss"] == hist[0]["loss"]  # not NaN


def test_compress_on_the_gpu_records_the_device(cuda, tmp_path):
    from qmixprune.run.compress import CompressConfig, compress
    from qmixprune.search import EnvConfig, SearchConfig

    cfg = CompressConfig(
        search=SearchConfig(episodes=2, env=EnvConfig(reward_batches=1, calib_batches=1)),
        distill=DistillConfig(epochs=1, batch_size=128),
        bench_runs=2,
        allow_untrained=True,
        device=str(cuda),
    )
    out = tmp_path / "o"
    res = compress(create("vgg16", width=0.125), load_data("digits"), 0.5, cfg, out, quiet=True)
    assert res.device == str(cuda) and next(res.model.parameters()).device == cuda
    assert json.loads((out / "report.json").read_text())["device"] == str(cuda)


def test_fpgm_unharmed_by_tf32(cuda):
    """Issue 24 (11): with TF32 matmuls allowed the native FPGM stays at float64 accuracy."""
    if not native.cuda_built():
        pytest.skip(f"CUDA kernels not built: {native.why_not('cuda')}")
    w = torch.randn(256, 64, 3, 3, generator=torch.Generator().manual_seed(0)).to(cuda)
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        (a,) = ops.fpgm([w], True)
    finally:
        torch.set_float32_matmul_precision(old)
    (b,) = ops.fpgm([w], False)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * b.abs().max().item())
