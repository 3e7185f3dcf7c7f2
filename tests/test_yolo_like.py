"""A YOLO-shaped detector without ultralytics: C2f chunks, SPPF, an upsampling neck and a
detect-like head, captured with torch.export, pruned, saved and restored exactly."""

import warnings

import torch
from nets import YoloLike, randomize_bn

from qmixprune import analyze, apply_plan, count, load, make_plan, save


def test_prune_keeps_head_widths_and_restores(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(YoloLike(nc=3)).eval()
    x = torch.rand(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = analyze(model, x)
        pruned = apply_plan(model, graph, make_plan(model, graph, 0.5)).eval()
    assert graph.capture == "export"
    kept = count(pruned, x)[0] / count(model, x)[0]
    assert kept <= 0.45, kept
    # the output convs keep their widths: 4 box and 3 class channels per scale
    for seq in (*pruned.box, *pruned.cls):
        assert seq[1].out_channels == (4 if seq in list(pruned.box) else 3)
    assert pruned.c2f2.cv1[0].out_channels < model.c2f2.cv1[0].out_channels
    with torch.no_grad():
        before, after = model(x), pruned(x)
    assert [y.shape for y in after] == [y.shape for y in before]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        restored = load(save(pruned, tmp_path / "y.safetensors", (3, 64, 64)), model=YoloLike(3))
    with torch.no_grad():
        again = restored(x)
    assert all(torch.equal(a, b) for a, b in zip(again, after))
