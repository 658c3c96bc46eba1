"""Test-wide fixtures: an isolated OPENLEDGER_HOME and the converted offline base model."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

# NOTE: Triton reads TRITON_INTERPRET when it is first imported, and transformers / peft
# import it as soon as it is installed; so it is set here, before any test module loads,
# for machines without a CUDA device (the kernels then run on CPU tensors).
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Modules that compare fast float paths with references (kernels, engine parity with
# transformers and PEFT, influence against exact inverses). `nox -s tests` runs them a second
# time on lower CPU paths (ATEN_CPU_CAPABILITY=avx2 ...): summation orders differ there.
NUMERICS_MODULES = frozenset(
    {
        "tests/attribution/test_attribution_batched.py",
        "tests/attribution/test_attribution_influence.py",
        "tests/attribution/test_attribution_retrieval.py",
        "tests/serve/test_serve_adapters_engine.py",
        "tests/serve/test_serve_attention_ops.py",
        "tests/serve/test_serve_cpu_kernels.py",
        "tests/serve/test_serve_engine.py",
        "tests/serve/test_serve_linear.py",
        "tests/serve/test_serve_lora_layer.py",
        "tests/serve/test_serve_lora_ops.py",
        "tests/serve/test_serve_lora_triton.py",
        "tests/serve/test_serve_merge.py",
        "tests/serve/test_serve_mixed_steps.py",
        "tests/serve/test_serve_parity.py",
        "tests/serve/test_serve_quantization.py",
        "tests/serve/test_serve_sampling.py",
        "tests/train/test_batching.py",
        "tests/train/test_finetune.py",
        "tests/train/test_finetune_checks.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of :data:`NUMERICS_MODULES` ``numerics``."""
    root = config.rootpath
    # NOTE: a renamed module must not drop out of the second-capability run unnoticed.
    if missing := sorted(m for m in NUMERICS_MODULES if not (root / m).is_file()):
        raise pytest.UsageError(
            f"tests/conftest.py NUMERICS_MODULES names missing files: {missing}"
        )
    for item in items:
        if item.path.relative_to(root).as_posix() in NUMERICS_MODULES:
            item.add_marker(pytest.mark.numerics)


def missing_reference(reason: str) -> NoReturn:
    """Skip a test whose independent reference (node, the npm libraries, anvil, forge, a C
    compiler) is not installed; under ``CI`` fail instead: CI installs every reference, so
    a missing one is a broken set-up that a skip would hide."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it; under CI=true a missing reference fails)")
    pytest.skip(reason)


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
        missing_reference(f"offline model package missing: {alias.install_command}")
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
