import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed_and_cache(tmp_path_factory, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("QMIXPRUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
