import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """The digit classifier is cached in a temporary directory, never the user's cache."""
    cache = os.environ.get("DIFFUSIONLAB_TEST_CACHE")
    if cache is None:
        cache = str(tmp_path_factory.getbasetemp() / "dl-cache")
        os.environ["DIFFUSIONLAB_TEST_CACHE"] = cache
    monkeypatch.setenv("DIFFUSIONLAB_CACHE", cache)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory):
    """Tiny text and class checkpoints for the page's tests (trained once per session)."""
    from serve_helpers import train_runs

    return train_runs(tmp_path_factory.mktemp("serve") / "runs")
