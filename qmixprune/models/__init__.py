"""Model registry: ``create(name, num_classes, width)`` and ``list_models()``.

Every model made here carries an architecture spec (``arch_spec(model)``) so that a
pruned copy can be saved as data and rebuilt later without pickle.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ..errors import UserError
from .alexnet import alexnet
from .resnet import resnet56
from .vgg import vgg16

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "vgg16": vgg16,
    "alexnet": alexnet,
    "resnet56": resnet56,
}

SPEC_ATTR = "qmixprune_arch"


def list_models() -> list[str]:
    """Names accepted by :func:`create` (``torchvision:NAME`` and ``timm:NAME`` too)."""
    return sorted(_BUILDERS)


def create(name: str, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """Build a model by name, untrained; ``torchvision:NAME`` takes any torchvision classifier
    and ``timm:NAME`` any timm model (``pip install timm``; no pretrained weights)."""
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    if width <= 0:
        raise UserError(f"width must be > 0, got {width}")
    if name.startswith("torchvision:"):
        model = _torchvision_model(name.split(":", 1)[1], num_classes, width)
    elif name.startswith("timm:"):
        model = _timm_model(name.split(":", 1)[1], num_classes, width)
    elif name in _BUILDERS:
        model = _BUILDERS[name](num_classes=num_classes, width=width)
    else:
        raise UserError(
            f"unknown model {name!r}; choose one of {list_models()}, "
            "'torchvision:NAME' or 'timm:NAME'"
        )
    setattr(model, SPEC_ATTR, {"name": name, "num_classes": num_classes, "width": width})
    return model


def arch_spec(model: nn.Module) -> dict | None:
    """The ``create`` arguments a model was built with, or None for a foreign model."""
    spec = getattr(model, SPEC_ATTR, None)
    return dict(spec) if spec is not None else None


def _torchvision_model(name: str, num_classes: int, width: float) -> nn.Module:
    import torchvision

    if width != 1.0:
        raise UserError("width only applies to the built-in CIFAR models, not to torchvision:*")
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise UserError(f"torchvision has no classification model {name!r}; try one of {available}")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _timm_model(name: str, num_classes: int, width: float) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UserError("timm:* models need timm: pip install 'qmixprune[timm]'") from None
    if width != 1.0:
        raise UserError("width only applies to the built-in CIFAR models, not to timm:*")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise UserError(f"timm has no model {name!r}; similar names: {close}")
    # never pretrained: weights would be downloaded, and the spec must rebuild the same model
    return timm.create_model(name, pretrained=False, num_classes=num_classes)
