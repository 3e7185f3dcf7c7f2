import pytest
import torch

from qmixprune import count
from qmixprune.errors import UserError
from qmixprune.models import arch_spec, create, list_models
from qmixprune.models.vgg import CFG16


def vgg16_hand_count(classes: int = 10) -> tuple[int, int]:
    """MACs and params of CIFAR VGG-16-BN computed from its config, independently."""
    macs = params = 0
    c, side = 3, 32
    for v in CFG16:
        if v == "M":
            side //= 2
            continue
        macs += side * side * v * c * 9
        params += v * c * 9 + 2 * v  # conv (no bias) + BN affine
        c = v
    return macs + c * classes, params + c * classes + classes


def test_vgg16_counts_pinned():
    macs, params = count(create("vgg16"), torch.zeros(1, 3, 32, 32))
    assert (macs, params) == vgg16_hand_count() == (313_201_664, 14_724_042)


@pytest.mark.parametrize("name", list_models())
def test_builtin_models_run_and_carry_spec(name):
    m = create(name, num_classes=7, width=0.25).eval()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert arch_spec(m) == {"name": name, "num_classes": 7, "width": 0.25}


def test_known_sizes():
    x = torch.zeros(1, 3, 32, 32)
    assert count(create("resnet56"), x)[1] == pytest.approx(0.86e6, rel=0.01)
    convs = [m for m in create("alexnet").modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 192, 384, 256, 256]


def test_torchvision_model():
    m = create("torchvision:resnet18", num_classes=4).eval()
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "nope"}, "unknown model"),
        ({"name": "torchvision:nope"}, "no classification model"),
        ({"name": "vgg16", "num_classes": 0}, "num_classes"),
        ({"name": "torchvision:resnet18", "width": 0.5}, "width"),
    ],
)
def test_bad_model_requests(kwargs, match):
    with pytest.raises(UserError, match=match):
        create(**kwargs)
