from __future__ import annotations

import os
from pathlib import Path

import pytest

from openledger.models import ALIASES, ensure_converted, save_tiny_model

SMOLLM2 = ALIASES["smollm2-135m-instruct"]


@pytest.fixture(scope="session")
def smollm2_dir(openledger_home: Path) -> Path:
    """The converted SmolLM2 cache (converted once per test home; ~40 s the first time)."""
    if SMOLLM2.find_gguf() is None:
        reason = f"offline model package missing: {SMOLLM2.install_command}"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI installs it; a skip there would hide a broken set-up
        pytest.skip(reason)
    return ensure_converted(SMOLLM2)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama", seed=1)
