from pathlib import Path

import pytest
import torch

# The project is importable as installed (pip install -e .) or from the repository root (python -m pytest);
# pytest puts this folder on the path for the tests' own helpers (generated_weights, fake_hpatches).
ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(autouse=True)
def _no_grad_and_seed():
    torch.manual_seed(0)
    with torch.no_grad():
        yield


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache, so no test sees (or writes) the user's real cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"
