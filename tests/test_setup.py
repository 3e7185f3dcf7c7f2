"""setup.py's decisions about the CUDA kernels, as pure functions (no build here)."""

import importlib.util
from pathlib import Path

import pytest
import setuptools

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_py():
    mp = pytest.MonkeyPatch()
    mp.setattr(setuptools, "setup", lambda **kw: None)  # load the module, build nothing
    try:
        spec = importlib.util.spec_from_file_location("qmixprune_setup", ROOT / "setup.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        mp.undo()
    return mod


def test_nvcc_major_must_match_torch(setup_py):
    """Issue 24 (3): torch refuses the whole build (CPU kernels too) on a major mismatch."""
    build, arch, warning = setup_py.cuda_plan("12.4", "13.0", True, None, False)
    assert not build and "nvcc is CUDA 12.4 but torch was built with CUDA 13.0" in warning
    build, arch, warning = setup_py.cuda_plan("13.1", "13.0", True, None, False)
    assert build and warning is None and arch is None  # a visible GPU: torch's own choice
    assert setup_py.cuda_plan(None, "13.0", True, None, False)[0] is False
    assert setup_py.cuda_plan("13.0", None, False, None, False) == (False, None, None)


def test_default_architectures_without_a_gpu(setup_py):
    """Issue 24 (4): "8.7;9.0" without PTX left A100, A10, RTX 30/40 and Blackwell with no
    kernel image; the default covers Turing to Hopper plus PTX, and Orin on a Jetson."""
    _, arch, _ = setup_py.cuda_plan("12.4", "12.4", False, None, False)
    archs = arch.split(";")
    assert {"7.5", "8.0", "8.6", "8.9"} <= set(archs) and archs[-1].endswith("+PTX")
    _, arch, _ = setup_py.cuda_plan("12.6", "12.6", False, None, True)
    assert arch.startswith("8.7") and "+PTX" in arch
    assert setup_py.cuda_plan("12.4", "12.4", False, "8.0", False)[1] == "8.0"  # the user's


def test_nvcc_release_parsed(setup_py, tmp_path):
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.6, V12.6.77'\n")
    nvcc.chmod(0o755)
    assert setup_py.nvcc_release(str(tmp_path)) == "12.6"
    assert setup_py.nvcc_release(str(tmp_path / "none")) is None
