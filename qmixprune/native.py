"""The compiled extensions and which backend runs on each device.

Two extensions, so that a failed CUDA build keeps the CPU kernels:
- ``qmixprune._C`` defines the ``torch.ops.qmixprune`` ops and their CPU kernels;
- ``qmixprune._C_cuda`` adds CUDA kernels to the same ops (built only with a CUDA toolkit and
  a CUDA build of torch).
``qmixprune.ops`` runs the kernels of the tensors' device when that device has them, and its
pure-PyTorch reference path otherwise, with one warning line per device saying so.
"""

from __future__ import annotations

import functools
import os
import warnings

DEVICES = ("cpu", "cuda")


def _first_line(exc: BaseException, default: str) -> str:
    return str(exc).splitlines()[0] if str(exc) else default


@functools.cache
def _load() -> str | None:
    """None when the CPU extension (which also defines the ops) loaded, else why not
    (warned about once)."""
    if os.environ.get("QMIXPRUNE_NATIVE", "1") == "0":
        return "disabled by QMIXPRUNE_NATIVE=0"
    try:
        import torch  # noqa: F401  (loads libc10 and libtorch, which _C links against)

        from . import _C  # noqa: F401
    except ImportError as exc:
        reason = _first_line(exc, "not built")
        warnings.warn(
            f"qmixprune: native kernels unavailable ({reason}); using the PyTorch reference path",
            stacklevel=3,
        )
        return reason
    return None


@functools.cache
def _load_cuda() -> str | None:
    """None when CUDA kernels are registered, else why not (no warning: a CPU-only user never
    needs them; ``ops`` warns when a CUDA tensor meets the reference path)."""
    reason = _load()
    if reason is not None:
        return reason
    import torch

    try:
        from . import _C_cuda  # noqa: F401  (registers the CUDA kernels of the ops _C defined)
    except Exception as exc:  # ImportError; RuntimeError if its kernels were registered twice
        reason = f"qmixprune._C_cuda: {_first_line(exc, 'not built')}"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("qmixprune::filter_norms", "CUDA"):
        return reason or "the CUDA extension registered no kernels"
    # (an older single-extension build registers them from _C)
    reason = _probe_cuda()
    if reason is not None:
        warnings.warn(f"qmixprune: {reason}; using the PyTorch reference path", stacklevel=3)
    return reason


def _probe_cuda() -> str | None:
    """None when one tiny kernel launch runs on the visible GPU (or none is visible: there is
    nothing to run on); else why not. Kernels built for other architectures load fine and
    fail only at launch ("no kernel image is available for execution on the device")."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        torch.ops.qmixprune.filter_norms([torch.ones(2, 3, device="cuda")], 1)
        torch.cuda.synchronize()
    except Exception as exc:
        return (
            f"qmixprune._C_cuda cannot run on this GPU ({_first_line(exc, 'launch failed')}): "
            "rebuild it with TORCH_CUDA_ARCH_LIST set to this GPU's compute capability"
        )
    return None


def available(device: str = "cpu") -> bool:
    """Whether native kernels run tensors of ``device`` (a device type, or a device)."""
    kind = str(device).split(":")[0]
    if kind == "cpu":
        return _load() is None
    if kind == "cuda":
        return _load_cuda() is None
    return False  # other devices (meta, mps, ...) take the reference path


def why_not(device: str = "cpu") -> str | None:
    """Why ``device`` has no native kernels (None when it has them)."""
    kind = str(device).split(":")[0]
    if kind == "cpu":
        return _load()
    if kind == "cuda":
        return _load_cuda()
    return f"no native kernels for {kind} tensors"


def backend(device: str = "cpu") -> str:
    """'native' or 'reference': what ``qmixprune.ops`` runs for ``device`` (in reports)."""
    return "native" if available(device) else "reference"


def backends() -> dict[str, str]:
    """What runs per device: 'native', or 'reference (why)'."""
    return {d: "native" if available(d) else f"reference ({why_not(d)})" for d in DEVICES}


def cuda_built() -> bool:
    """Whether CUDA kernels were built and load (they run only where a GPU is present)."""
    return available("cuda")


@functools.cache
def warn_reference(device: str) -> None:
    """One warning per device type whose tensors reach the reference path for want of
    kernels (the CPU's is given when ``_C`` fails to load)."""
    if device == "cuda":  # other devices (meta, mps) have no kernels to miss
        warnings.warn(
            f"qmixprune: no native kernels for {device} tensors ({why_not(device)}); "
            "using the PyTorch reference path",
            stacklevel=4,
        )
