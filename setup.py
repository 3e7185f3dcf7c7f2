"""Packaging lives in pyproject.toml; this file builds the native extensions.

Two extensions: ``qmixprune._C`` (the ops' schemas and C++ CPU kernels) is built whenever
torch is importable at build time (install with ``pip install --no-build-isolation``);
``qmixprune._C_cuda`` (CUDA kernels for the same ops) is added when a CUDA toolkit and a CUDA
build of torch are present; ``QMIXPRUNE_CUDA=auto|0|1`` chooses (1: required). Without a GPU
to detect, the CUDA kernels are built for ``TORCH_CUDA_ARCH_LIST`` (default: Turing to Hopper
with PTX for later GPUs on x86, Orin with PTX on a Jetson). An nvcc whose CUDA major differs
from torch's drops the CUDA kernels with one warning (torch would fail the whole build). A
failed build never fails the install: a failed CUDA build keeps the CPU kernels (CUDA tensors
then take the pure-PyTorch reference path), a failed CPU build leaves the reference path for
every device.
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup


def _cuda_home() -> str | None:
    """The CUDA toolkit root: bin/ with the real nvcc, lib64/ with libcudart."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        try:  # a wrapper script that execs the real nvcc
            m = re.search(r"(/\S+)/bin/nvcc", real.read_text(errors="ignore")[:4096])
            if m:
                candidates.append(m.group(1))
        except OSError:
            pass
        candidates.append(str(real.parent.parent))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and Path(c, "bin", "nvcc").is_file() and glob.glob(f"{c}/lib*/libcudart*"):
            return c
    return None


# sm_75 (Turing: T4) to sm_90 (Hopper), and PTX of sm_90 that later GPUs (Blackwell) compile
# at load; Jetson Orin is sm_87 (its PTX serves Thor)
DEFAULT_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"
JETSON_ARCHS = "8.7+PTX"


def nvcc_release(cuda_home: str) -> str | None:
    """The CUDA release nvcc reports ("12.4"), or None when it cannot be run."""
    try:
        out = subprocess.run(
            [str(Path(cuda_home, "bin", "nvcc")), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def cuda_plan(
    nvcc: str | None,
    torch_cuda: str | None,
    gpu_visible: bool,
    arch_env: str | None,
    jetson: bool,
) -> tuple[bool, str | None, str | None]:
    """Whether to build the CUDA kernels, for which TORCH_CUDA_ARCH_LIST (None: torch's
    choice, the visible GPUs' own), and a warning to print (None: nothing to say)."""
    if torch_cuda is None:
        return False, None, None
    if nvcc is None:
        return (
            False,
            None,
            "qmixprune: WARNING: nvcc does not report its CUDA release; "
            + ("skipping the CUDA kernels (CUDA tensors will use the PyTorch reference path)"),
        )
    if nvcc.split(".")[0] != torch_cuda.split(".")[0]:
        return (
            False,
            None,
            f"qmixprune: WARNING: nvcc is CUDA {nvcc} but torch was built with CUDA "
            f"{torch_cuda}; skipping the CUDA kernels (CUDA tensors will use the PyTorch "
            "reference path): point CUDA_HOME at a CUDA "
            f"{torch_cuda.split('.')[0]}.x toolkit to build them",
        )
    if arch_env or gpu_visible:
        return True, arch_env or None, None
    return True, JETSON_ARCHS if jetson else DEFAULT_ARCHS, None


def _is_jetson() -> bool:
    return platform.machine() == "aarch64" and Path("/etc/nv_tegra_release").exists()


def _extensions():
    mode = os.environ.get("QMIXPRUNE_CUDA", "auto")
    if mode not in ("auto", "0", "1"):
        sys.exit(f"QMIXPRUNE_CUDA must be auto, 0 or 1, not {mode!r}")
    cuda_home = _cuda_home() if mode != "0" else None
    if cuda_home:
        os.environ.setdefault("CUDA_HOME", cuda_home)  # read by cpp_extension on import
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print(
            "qmixprune: torch is not importable at build time; skipping the native "
            "extension (install with --no-build-isolation to build it)",
            file=sys.stderr,
        )
        return [], {}
    sources = ["csrc/module.cpp", "csrc/ops.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    with_cuda, arch, warning = False, None, None
    if cuda_home and torch.version.cuda is not None:
        with_cuda, arch, warning = cuda_plan(
            nvcc_release(cuda_home),
            torch.version.cuda,
            torch.cuda.is_available(),
            os.environ.get("TORCH_CUDA_ARCH_LIST"),
            _is_jetson(),
        )
    if mode == "1" and not with_cuda:
        sys.exit(
            "QMIXPRUNE_CUDA=1 but no CUDA toolkit (CUDA_HOME), no CUDA build of torch, or "
            f"a toolkit torch cannot build with: {warning or ''}"
        )
    if warning:
        print(warning, file=sys.stderr)
    # the CPU extension first: it defines the ops the CUDA one adds kernels to
    exts = [
        cpp_extension.CppExtension(
            "qmixprune._C", sources, extra_compile_args={"cxx": ["-O3"]}, optional=True
        )
    ]
    if with_cuda:
        if arch:
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        cuda_sources = ["csrc/module_cuda.cpp", *sorted(glob.glob("csrc/cuda/*.cu"))]
        exts.append(
            cpp_extension.CUDAExtension(
                "qmixprune._C_cuda",
                cuda_sources,
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
                optional=mode != "1",
            )
        )

    class Build(cpp_extension.BuildExtension):
        """Torch's builder, but an optional extension that fails to compile only warns."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:
                if not getattr(ext, "optional", False):
                    raise
                fallback = (
                    "CUDA tensors will use the PyTorch reference path; the CPU kernels are kept"
                    if ext.name.endswith("_cuda")
                    else "the package will use its PyTorch reference path"
                )
                print(
                    f"qmixprune: WARNING: building {ext.name} failed ({exc}); {fallback}",
                    file=sys.stderr,
                )

    return exts, {"build_ext": Build}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
