"""Gemma 3 270M (real weights, the ``gemma3-270m`` offline alias) served against
transformers, and how an alias joins a GGUF file split over chunk packages."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from openledger.exceptions import ModelNotAvailableError
from openledger.models import ALIASES, OfflineModel, ensure_converted
from openledger.serve import Engine, EngineConfig, SamplingParams
from openledger.serve.models.config import ModelConfig

GEMMA3 = ALIASES["gemma3-270m"]


@pytest.fixture
def chunk_packages(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """Three importable chunk packages (real folders on ``sys.path``) of one file."""
    root = tmp_path / "site"
    data = [b"GGUF" + bytes(range(200)), bytes(range(255, 0, -1)) * 3, b"tail"]
    for i, chunk in enumerate(data):
        folder = root / f"ol_test_chunks_part{i}" / "data"
        folder.mkdir(parents=True)
        (folder / f"model.gguf.part0{i}").write_bytes(chunk)
        (folder.parent / "__init__.py").write_text("")
    sys.path.insert(0, str(root))
    yield root, data
    sys.path.remove(str(root))


def _alias(sha256: str) -> OfflineModel:
    return OfflineModel(
        name="chunked",
        package="ol-test-chunks",
        version="1.0",
        module="ol_test_chunks",
        gguf_file="model.gguf",
        hub_id="none/none",
        description="test",
        parts=tuple(
            (f"ol-test-chunks-part{i}", f"ol_test_chunks_part{i}", f"data/model.gguf.part0{i}")
            for i in range(3)
        ),
        sha256=sha256,
    )


def test_chunks_are_joined_once_and_checked(
    chunk_packages: tuple[Path, list[bytes]], openledger_home: Path
) -> None:
    _, data = chunk_packages
    whole = b"".join(data)
    alias = _alias(hashlib.sha256(whole).hexdigest())
    assert alias.requirements[1:] == tuple(f"ol-test-chunks-part{i}==1.0" for i in range(3))
    assert alias.install_command.endswith("ol-test-chunks-part2==1.0")
    joined = alias.find_gguf()
    assert joined == openledger_home / "gguf" / "model.gguf"
    assert joined.read_bytes() == whole
    assert alias.find_gguf() == joined  # kept: the same size as the chunks
    joined.unlink()
    with pytest.raises(ModelNotAvailableError, match="not the published"):
        _alias("0" * 64).find_gguf()
    assert not joined.exists()
    missing = _alias(hashlib.sha256(whole).hexdigest())
    gone = ("ol-test-chunks-part9", "ol_test_chunks_part9", "data/x")
    assert replace(missing, parts=(*missing.parts, gone)).find_gguf() is None


@pytest.fixture(scope="module")
def gemma3_dir() -> Path:
    if GEMMA3.find_gguf() is None:
        pytest.skip(f"offline model packages missing: {GEMMA3.install_command}")
    return ensure_converted(GEMMA3)


HfGreedy = Callable[[Path, list[int], int], list[int]]


@pytest.mark.slow
def test_gemma3_270m_greedy_matches_transformers(gemma3_dir: Path, hf_greedy: HfGreedy) -> None:
    config = ModelConfig.from_folder(gemma3_dir)
    assert (config.model_type, config.num_layers, config.head_dim) == ("gemma3_text", 18, 256)
    assert config.layer_windows.count(None) == 3  # every sixth layer is global
    engine = Engine(gemma3_dir, EngineConfig(num_blocks=64, max_num_seqs=3, block_size=16))
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
    outputs = engine.generate(prompts, SamplingParams(max_tokens=12))
    for output in outputs:
        assert output.token_ids == hf_greedy(gemma3_dir, output.prompt_token_ids, 12)
    assert outputs[0].text.startswith(" the capital of the country of France")
