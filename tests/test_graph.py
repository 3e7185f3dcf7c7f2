import pytest
import torch
from nets import Concat, Mixed, UnknownOp, Untraceable

from qmixprune import analyze
from qmixprune.errors import TraceError
from qmixprune.models import create

X = torch.randn(2, 3, 8, 8)


def test_mixed_model_groups():
    g = analyze(Mixed(), X)
    stem = g.group("stem")
    # residual add and squeeze-excitation multiply tie b1 and se2 to the stem
    assert set(stem.modules) >= {"stem", "stem_bn", "b1", "b1_bn", "se2", "se1", "left", "right"}
    assert stem.prunable and stem.channels == 8
    assert g.group("se1").prunable and g.group("se1").channels == 4
    # the concat feeds a depthwise conv and then a grouped conv: left alone
    for name in ("left", "right"):
        assert not g.group(name).prunable
        assert "grouped conv" in g.group(name).reason
    # the grouped conv's own outputs prune in equal blocks (one per group)
    assert g.group("grouped").prunable and g.group("grouped").period == 2
    assert "dw" in g.group("left").modules
    # flatten -> Linear: each channel of `last` spreads over 2x2 positions
    last = g.group("last")
    assert last.prunable
    head_in = [s for s in last.slots if s.module == "head"][0]
    assert head_in.kind == "linear_in" and head_in.segs[0].expand == 4
    assert not g.group("head").prunable and "output" in g.group("head").reason


def test_concat_offsets():
    g = analyze(Concat(), X)
    assert g.group("a").prunable and g.group("b").prunable
    bn = [s for s in g.slots if s.module == "bn"][0]
    assert [g.space_group[s.space] for s in bn.segs] == ["a", "b"]
    assert g.group("c").prunable  # mean over H, W keeps the channel axis


def test_unknown_op_blocks_only_what_it_touches():
    with pytest.warns(UserWarning, match="roll"):
        g = analyze(UnknownOp(), X)
    assert not g.group("c1").prunable and "roll" in g.group("c1").reason
    assert g.group("c2").prunable and g.group("c3").prunable


def test_untraceable_names_the_construct():
    with pytest.raises(TraceError, match=r"cannot trace Untraceable.*nets.py:\d+"):
        analyze(Untraceable(), X)


def test_vgg_and_resnet_groups():
    g = analyze(create("vgg16"), torch.zeros(1, 3, 32, 32))
    assert len(g.prunable) == 13
    assert [grp.channels for grp in g.prunable][:3] == [64, 64, 128]
    r = analyze(create("resnet56"), torch.zeros(1, 3, 32, 32))
    # 27 inner convs + one tied residual group per stage
    assert len(r.prunable) == 30
    assert r.group("conv1").channels == 16 and len(r.group("conv1").modules) > 20


def test_describe_reads_as_sentences():
    text = analyze(Concat(), X).describe()
    assert "out-channels of conv a => batchnorm bn => in-channels of conv c" in text


def test_analysis_leaves_model_state_alone():
    m = Mixed().train()
    before = m.stem_bn.running_mean.clone()
    analyze(m, X)
    assert m.training and torch.equal(before, m.stem_bn.running_mean)
