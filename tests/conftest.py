"""Test-wide fixtures: an isolated OPENLEDGER_HOME and the converted offline base model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


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
