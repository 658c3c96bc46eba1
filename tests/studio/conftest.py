"""Fixtures for openledger.studio: a Studio home with a tiny base model, an API client."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the Studio needs the [server] extra")

from fastapi.testclient import TestClient

from openledger.studio import StudioConfig, create_app

WORDS = ["red", "blue", "green", "gold", "pink", "gray", "teal", "navy"]

# NOTE: a few steps of a tiny Llama; the browser and API tests only watch them happen.
TINY_RECIPE: dict[str, Any] = {
    "r": 4,
    "alpha": 8,
    "dropout": 0.0,
    "target_modules": "q_proj,v_proj",
    "learning_rate": 1e-2,
    "max_steps": 8,
    "batch_size": 4,
    "max_length": 64,
}


def colour_rows(words: list[str] = WORDS) -> list[dict[str, str]]:
    """Instruction rows whose answers follow from their prompts (``Code red?`` -> ``RED ok.``)."""
    return [{"instruction": f"Code {w}?", "response": f"{w.upper()} ok."} for w in words]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    """Rows as JSONL bytes."""
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def studio_home(tmp_path: Path, memorising_llama_dir: Path) -> Path:
    """A Studio home whose models/ holds a tiny Llama (a symlink to the session's copy)."""
    home = tmp_path / "studio"
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny-llama").symlink_to(memorising_llama_dir, target_is_directory=True)
    return home


@pytest.fixture
def client(studio_home: Path) -> Iterator[TestClient]:
    """A TestClient over a Studio on ``studio_home`` with a 4 KiB upload limit."""
    app = create_app(StudioConfig(home=studio_home, max_upload_bytes=4096))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
