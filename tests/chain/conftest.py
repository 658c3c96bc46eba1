"""Chain fixtures: an anvil node per test session, and a chain per backend.

anvil comes from npm (``cd contracts && npm ci``); where it is absent the anvil half of
every parametrised test skips with that reason, and the embedded half still runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from tests.conftest import missing_reference

from openledger.chain import Chain, Protocol, connect

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"
BACKENDS = ["embedded", "anvil"]


def tool_path(tool: str) -> Path | None:
    """Return the foundry binary ``tool``: ``$OPENLEDGER_<TOOL>`` if set (``None`` unless it
    is executable), else the npm-installed one under contracts/node_modules, else PATH."""
    override = os.environ.get(f"OPENLEDGER_{tool.upper()}")
    if override:
        return Path(override) if os.access(override, os.X_OK) else None
    for candidate in sorted(CONTRACTS.glob(f"node_modules/@foundry-rs/{tool}-*/bin/{tool}")):
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(tool)
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> Chain:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"anvil exited with code {process.returncode} before answering")
        try:
            return connect(url, receipt_timeout=30)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def running_anvil(*extra_args: str) -> Iterator[str]:
    """Start anvil on 127.0.0.1 at a free port, yield its URL, stop it by its PID.

    Skips the calling test when the binary is not installed (fails under CI).
    """
    binary = tool_path("anvil")
    if binary is None:
        missing_reference("anvil not found: run `npm ci` in contracts/ or set OPENLEDGER_ANVIL")
    port = _free_port()
    process = subprocess.Popen(
        # NOTE: --max-persisted-states 0: anvil otherwise writes every old state to
        # ~/.foundry/anvil/tmp and leaves it there (gigabytes per busy test run)
        [
            str(binary),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--silent",
            "--max-persisted-states",
            "0",
            *extra_args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def start_anvil() -> Callable[..., AbstractContextManager[str]]:
    """The :func:`running_anvil` context manager, for tests that need their own node."""
    return running_anvil


@pytest.fixture(scope="session")
def anvil_url() -> Iterator[str]:
    """One anvil for the whole session."""
    with running_anvil() as url:
        yield url


@pytest.fixture(scope="session")
def contracts_dir() -> Path:
    """The Solidity project folder (contracts/)."""
    return CONTRACTS


@pytest.fixture(scope="session")
def forge() -> Path | None:
    """The forge binary from npm, or ``None`` where it is not installed."""
    return tool_path("forge")


@pytest.fixture(params=BACKENDS)
def chain(request: pytest.FixtureRequest) -> Chain:
    """A chain on each backend: a fresh embedded py-evm chain, or the session's anvil."""
    if request.param == "embedded":
        return connect()
    url: str = request.getfixturevalue("anvil_url")
    return connect(url, receipt_timeout=30)


@pytest.fixture
def protocol(chain: Chain) -> Protocol:
    """A freshly deployed protocol (OpenToken included) on ``chain``."""
    return chain.deploy_protocol()
