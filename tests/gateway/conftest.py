"""Fixtures for the gateway tests: a tiny model with two adapters, and real servers.

Servers are `openledger serve` subprocesses bound to 127.0.0.1 on a free port, stopped by
the PID we started (SIGTERM, or SIGKILL for the crash tests).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pytest.importorskip("fastapi", reason="the [server] extra is not installed")
pytest.importorskip("openai", reason="the official openai client is not installed")

ENGINE = {"max_num_seqs": 64, "kv_cache_memory": 8 * 2**20, "max_num_batched_tokens": 2048}


@dataclass
class GatewayModels:
    """A tiny base model folder and two adapters of it."""

    base: Path
    adapters: dict[str, Path]


@dataclass
class Server:
    """A running `openledger serve` subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    ledger: Path
    key: str
    log: Path
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str | None = None, **kwargs: Any) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.base_url + "/v1", api_key=key or self.key, **kwargs)

    def async_client(self, key: str | None = None, **kwargs: Any) -> Any:
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.base_url + "/v1", api_key=key or self.key, **kwargs)

    def post(self, path: str, body: Any, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.post(self.base_url + path, json=body, headers=headers, timeout=60)

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.get(self.base_url + path, headers=headers, timeout=60)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` to the process we started and wait for it; return its exit code."""
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    folder: Path,
    models: GatewayModels,
    *,
    ledger: Path | None = None,
    key: str | None = None,
    extra: dict[str, Any] | None = None,
    flags: tuple[str, ...] = (),
    timeout: float = 90,
) -> Server:
    """Start a gateway on a free port (``flags`` added to ``openledger serve``) and wait
    until /health answers."""
    from openledger.gateway import ReceiptLedger

    folder.mkdir(parents=True, exist_ok=True)
    ledger = ledger or folder / "ledger.db"
    if key is None:
        with ReceiptLedger(ledger) as book:
            key, _ = book.create_key(name="tests")
    config = {
        "model": str(models.base),
        "served_model_name": "tiny",
        "adapters": {name: str(path) for name, path in models.adapters.items()},
        "ledger": str(ledger),
        "drain_timeout": 20,
        "log_level": "warning",
        "engine": ENGINE,
        **(extra or {}),
    }
    config_file = folder / f"gateway-{time.monotonic_ns()}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / f"server-{port}.log"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "openledger.cli", "-v", "serve", "--config", str(config_file)]
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [*command, *flags, "--port", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Server(process, port, ledger, key, log, config)
    _wait_healthy(server, timeout)
    return server


def _wait_healthy(server: Server, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the gateway exited early:\n{server.output()[-4000:]}")
        try:
            if httpx.get(server.base_url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"the gateway did not start in {timeout} s:\n{server.output()[-4000:]}")


@pytest.fixture(scope="session")
def gateway_models(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> GatewayModels:
    """The tiny Llama and two LoRA adapters of it (one with a manifest-less folder each)."""
    from tests.serve.serve_lora_factory import make_peft_adapter

    root = tmp_path_factory.mktemp("gateway-adapters")
    targets = ["q_proj", "v_proj", "down_proj"]
    adapters = {
        name: make_peft_adapter(tiny_llama_dir, root / name, r=4, targets=targets, seed=seed)
        for name, seed in (("alpha", 11), ("beta", 12))
    }
    return GatewayModels(tiny_llama_dir, adapters)


@pytest.fixture(scope="module")
def server(
    gateway_models: GatewayModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One gateway for a test module."""
    running = start_server(tmp_path_factory.mktemp("gateway"), gateway_models)
    yield running
    running.stop()


def receipts_in(ledger: Path) -> list[dict[str, Any]]:
    """Every receipt in a ledger file, as JSON (read with a separate connection)."""
    from openledger.gateway import ReceiptLedger

    with ReceiptLedger(ledger) as book:
        return [json.loads(r.to_json()) for r in book.receipts()]
