"""The compiled extension ``qmixprune._C``, if it was built, and which backend runs.

Importing it registers the ``torch.ops.qmixprune`` kernels (CPU, and CUDA where built).
When it is absent or broken, ``qmixprune.ops`` uses its pure-PyTorch reference path and
one warning line says so.
"""

from __future__ import annotations

import functools
import os
import warnings


@functools.cache
def _load() -> str | None:
    """None when the extension loaded, else why not (warned about once)."""
    if os.environ.get("QMIXPRUNE_NATIVE", "1") == "0":
        return "disabled by QMIXPRUNE_NATIVE=0"
    try:
        import torch  # noqa: F401  (loads libc10 and libtorch, which _C links against)

        from . import _C  # noqa: F401
    except ImportError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "not built"
        warnings.warn(
            f"qmixprune: native kernels unavailable ({reason}); using the PyTorch reference path",
            stacklevel=3,
        )
        return reason
    return None


def available() -> bool:
    """Whether the native kernels are loaded."""
    return _load() is None


def backend() -> str:
    """'native' or 'reference': what ``qmixprune.ops`` runs (shown in reports)."""
    return "native" if available() else "reference"


def cuda_built() -> bool:
    """Whether the CUDA kernels were compiled in (they run only where a GPU is present)."""
    if not available():
        return False
    import torch

    return torch._C._dispatch_has_kernel_for_dispatch_key("qmixprune::filter_norms", "CUDA")
