"""ultralytics YOLO models (untrained, built from their yaml: no download) captured with
torch.export, pruned at 0.5: fewer MACs, the same output shapes, restored exactly."""

import warnings

import pytest
import torch

pytest.importorskip("ultralytics")
from ultralytics.nn.tasks import DetectionModel, PoseModel, SegmentationModel  # noqa: E402

from qmixprune import analyze, apply_plan, count, load, make_plan, save  # noqa: E402

CASES = {
    "yolov8n": lambda: DetectionModel("yolov8n.yaml", verbose=False),
    "yolo11n": lambda: DetectionModel("yolo11n.yaml", verbose=False),
    "yolov8n-seg": lambda: SegmentationModel("yolov8n-seg.yaml", verbose=False),
    "yolo11n-pose": lambda: PoseModel("yolo11n-pose.yaml", verbose=False),
}


def _shapes(y):
    if isinstance(y, (list, tuple)):
        return [s for item in y for s in _shapes(item)]
    if isinstance(y, dict):
        return [s for item in y.values() for s in _shapes(item)]
    return [tuple(y.shape)] if isinstance(y, torch.Tensor) else []


def _tensors(y):
    if isinstance(y, (list, tuple)):
        return [t for item in y for t in _tensors(item)]
    if isinstance(y, dict):
        return [t for item in y.values() for t in _tensors(item)]
    return [y] if isinstance(y, torch.Tensor) else []


@pytest.mark.parametrize("name", list(CASES))
def test_prune_half_and_restore(name, tmp_path):
    torch.manual_seed(0)
    model = CASES[name]().eval()
    x = torch.rand(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = analyze(model, x)
        pruned = apply_plan(model, graph, make_plan(model, graph, 0.5)).eval()
    assert graph.capture == "export" and len(graph.prunable) > 20
    kept = count(pruned, x)[0] / count(model, x)[0]
    assert kept <= 0.45, kept
    with torch.no_grad():
        before, after = model(x), pruned(x)
    assert _shapes(after) == _shapes(before)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = save(pruned, tmp_path / "m.safetensors", (3, 64, 64))
        restored = load(path, model=CASES[name]())
    with torch.no_grad():
        again = restored(x)
    assert all(torch.equal(a, b) for a, b in zip(_tensors(again), _tensors(after)))
