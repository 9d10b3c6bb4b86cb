import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Classifier caches go to a per-session temp folder, never the user's home."""
    monkeypatch.setenv("MASKDIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
