"""Detectors (not traceable whole: analysed by parts) and segmenters: prune, count, save
and restore onto a fresh instance, with the output structure unchanged."""

import warnings

import pytest
import torch
import torchvision.models.detection as det
import torchvision.models.segmentation as seg
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from qmixprune import analyze, apply_plan, count, load, make_plan, save
from qmixprune.errors import UserError


def ssdlite():
    torch.manual_seed(0)
    m = det.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3, width_mult=0.5
    )
    m.transform.fixed_size = (64, 64)  # anchors follow the feature maps: any size works
    return m


def faster_rcnn():
    torch.manual_seed(0)
    return det.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=3,
        min_size=64,
        max_size=64,
        rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_test=20,
        box_detections_per_img=10,
    )


def _resnet18_fpn():
    return resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        trainable_layers=5,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )


def retinanet():
    torch.manual_seed(0)
    return det.RetinaNet(_resnet18_fpn(), num_classes=3, min_size=64, max_size=64)


def fcos():
    torch.manual_seed(0)
    return det.FCOS(_resnet18_fpn(), num_classes=3, min_size=64, max_size=64)


def lraspp():
    torch.manual_seed(0)
    return seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)


def _flat(y):
    if isinstance(y, dict):
        return [(k, *v) for k in y for v in _flat(y[k])]
    if isinstance(y, (list, tuple)):
        return [v for item in y for v in _flat(item)]
    return [(y,)]


def _structure(y):
    """Keys and every tensor's trailing dims (detections per image may differ)."""
    return [(*path[:-1], tuple(path[-1].shape[1:])) for path in _flat(y)]


CASES = [ssdlite, faster_rcnn, retinanet, fcos, lraspp]


@pytest.mark.parametrize("make", CASES, ids=[c.__name__ for c in CASES])
def test_prune_count_save_restore(make, tmp_path):
    model = make().eval()
    x = torch.rand(1, 3, 64, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = analyze(model, x)
    detector = make is not lraspp
    assert bool(graph.parts) == detector  # segmenters trace whole
    if detector:
        assert "backbone" in graph.parts
        assert any("cannot be traced whole" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = apply_plan(model, graph, make_plan(model, graph, 0.3)).eval()
        assert count(pruned, x)[0] < count(model, x)[0]
        with torch.no_grad():
            before, after = model(x), pruned(x)
        assert _structure(after) == _structure(before)
        restored = load(save(pruned, tmp_path / "m.safetensors"), model=make())
        with torch.no_grad():
            again = restored(x)
    assert len(_flat(again)) == len(_flat(after))
    for a, b in zip(_flat(again), _flat(after)):
        assert a[:-1] == b[:-1] and torch.equal(a[-1], b[-1])


def test_parts_named_by_the_user():
    model = faster_rcnn().eval()
    x = torch.rand(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = analyze(model, x, parts=["backbone.body"])
        assert graph.parts == ["backbone.body"]
        assert all(m.startswith("backbone.body.") for g in graph.groups for m in g.modules)
        with pytest.raises(UserError, match="no submodule 'neck'"):
            analyze(model, x, parts=["neck"])
        with pytest.raises(UserError, match="part 'roi_heads'"):
            analyze(model, x, parts=["roi_heads"])


def test_cli_parts_names_a_missing_part_in_one_line(tmp_path, monkeypatch, capsys):
    from qmixprune.cli import main

    (tmp_path / "mydet.py").write_text(
        "import torchvision.models.detection as det\n"
        "def build():\n"
        "    return det.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None,"
        " num_classes=3, min_size=64, max_size=64)\n"
    )
    monkeypatch.chdir(tmp_path)
    torch.save(faster_rcnn().state_dict(), tmp_path / "det.pt")
    argv = ["analyze", "det.pt", "--model-factory", "mydet:build", "--input-size", "64"]
    assert main([*argv, "--parts", "neck"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no submodule 'neck'" in err[0]
