"""What a model is fed: the input size and the normalisation, stated and checked.

A model trained at 224 px with ImageNet statistics and run at 32 px with other statistics
gives wrong accuracies and a wrong plan without any error, so runs print these settings
first, store them in the report, and a failing forward pass names the size the model
expects where it can be found.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .errors import UserError

# mean, std per channel (RGB)
NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # maps [0, 1] to [-1, 1]
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # pixels in [0, 1]
}
NORMS["cifar"] = NORMS["cifar10"]

CANDIDATE_SIZES = (224, 32, 299, 256, 384, 28, 64, 96, 128)


def parse_norm(mean: str | None, std: str | None) -> tuple[tuple, tuple] | None:
    """``--mean``/``--std``: a preset name (``imagenet``, ``cifar10``, ``cifar100``, ``cifar``,
    ``half``, ``none``) or comma-separated numbers (1 or 3). None when neither is given."""
    if mean is None and std is None:
        return None
    m = _values(mean, "--mean", 0) if mean is not None else None
    s = _values(std, "--std", 1) if std is not None else None
    if m is None or s is None:
        preset = mean if m is not None and mean in NORMS else std
        if preset not in NORMS:
            raise UserError(
                "give both --mean and --std as numbers, or a preset name for either: "
                f"{sorted(NORMS)}"
            )
        m = m if m is not None else NORMS[preset][0]
        s = s if s is not None else NORMS[preset][1]
    if len(m) != len(s):
        raise UserError(f"--mean has {len(m)} values but --std has {len(s)}")
    if any(v <= 0 for v in s):
        raise UserError(f"--std must be > 0, got {s}")
    return tuple(m), tuple(s)


def _values(text: str, flag: str, which: int) -> tuple[float, ...]:
    if text in NORMS:
        return NORMS[text][which]
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(
            f"{flag} {text!r}: give 1 or 3 comma-separated numbers or one of {sorted(NORMS)}"
        ) from None
    if len(vals) not in (1, 3):
        raise UserError(f"{flag} takes 1 or 3 values (one per channel), got {len(vals)}")
    return vals * 3 if len(vals) == 1 else vals


def declared_size(model: nn.Module) -> int | None:
    """The square input side a model says it takes: a qmixprune file's stored shape,
    torchvision's ``image_size`` (ViT), timm's ``pretrained_cfg['input_size']``."""
    shape = getattr(model, "qmixprune_input_shape", None)
    if shape:
        return int(shape[-1])
    size = getattr(model, "image_size", None)
    if isinstance(size, int):
        return size
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and cfg.get("input_size"):
            return int(cfg["input_size"][-1])
    return None


def default_size(model: nn.Module, name: str | None) -> int:
    """The input side used when ``--input-size`` is not given: what the model declares,
    else 224 for torchvision/timm architectures (what their classifiers are trained at),
    else 32 (the built-in CIFAR models)."""
    size = declared_size(model)
    if size is not None:
        return size
    if name and name.startswith(("torchvision:", "timm:")):
        return 224
    return 32


def runs_at(model: nn.Module, size: int, channels: int = 3) -> bool:
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, size, size))
    except Exception:  # the user's model: any failure means "not this size"
        return False
    return True


def expected_size(model: nn.Module, tried: int, channels: int = 3) -> int | None:
    """The input side the model runs at, for a hint after it failed at ``tried``: the
    declared one, else the first of a few common sizes that runs (None if none does)."""
    size = declared_size(model)
    if size is not None and size != tried:
        return size
    for s in CANDIDATE_SIZES:
        if s != tried and runs_at(model, s, channels):
            return s
    return None


def check_forward(model: nn.Module, x: torch.Tensor) -> None:
    """Run ``model`` on ``x``; a failure becomes one line naming the size that works."""
    try:
        with torch.no_grad():
            model.eval()(x)
    except Exception as exc:  # the user's model: report any failure as an input mismatch
        msg = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__
        hint = "check --input-size"
        if x.dim() == 4:
            size = expected_size(model, x.shape[-1], x.shape[1])
            if size is not None:
                hint = f"it runs at {size} px: pass --input-size {size}"
        raise UserError(
            f"{type(model).__name__} fails on an input of shape {tuple(x.shape)} ({msg}); {hint}"
        ) from exc


def describe(shape, mean=None, std=None, source: str = "") -> str:
    """``3x224x224, normalised with mean (0.485, 0.456, 0.406) and std (...) (source)``."""
    text = "x".join(str(d) for d in shape)
    if mean is not None:

        def fmt(v) -> str:
            return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"

        text += f", normalised with mean {fmt(mean)} and std {fmt(std)}"
    return f"{text} ({source})" if source else text
