"""Test-wide fixtures: an isolated OPENLEDGER_HOME and the converted offline base model."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# NOTE: Triton reads TRITON_INTERPRET when it is first imported, and transformers / peft
# import it as soon as it is installed; so it is set here, before any test module loads,
# for machines without a CUDA device (the kernels then run on CPU tensors).
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def openledger_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point OPENLEDGER_HOME at a test-only folder for the whole run.

    ``OPENLEDGER_TEST_HOME`` (set by ``nox -s tests``) keeps converted models between runs;
    otherwise a fresh temporary folder is used.
    """
    home = Path(os.environ.get("OPENLEDGER_TEST_HOME") or tmp_path_factory.mktemp("home"))
    home.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("OPENLEDGER_HOME")
    os.environ["OPENLEDGER_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("OPENLEDGER_HOME", None)
    else:
        os.environ["OPENLEDGER_HOME"] = previous


@pytest.fixture(scope="session")
def smollm2_dir(openledger_home: Path) -> Path:
    """The converted SmolLM2-135M-Instruct cache (~40 s the first time in a test home).

    Skips when the offline model package is missing, except under CI (which installs it),
    where a skip would hide a broken set-up.
    """
    from openledger.models import ALIASES, ensure_converted

    alias = ALIASES["smollm2-135m-instruct"]
    if alias.find_gguf() is None:
        reason = f"offline model package missing: {alias.install_command}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return ensure_converted(alias)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama folder (weights seeded with 1) with its tokenizer."""
    from openledger.models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama", seed=1)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module's tiny models on one torch thread (fastest on CI's two shared cores)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def memorising_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose head is large enough (init range 0.3) to memorise quickly."""
    from openledger.models import save_tiny_model

    folder = tmp_path_factory.mktemp("memorising") / "llama"
    return save_tiny_model(folder, "llama", seed=1, initializer_range=0.3)
