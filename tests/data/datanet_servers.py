"""Datanet services for tests and benchmarks: real uvicorn servers on 127.0.0.1.

A service runs in its own process (spawned, so the test process's state stays out of
it), bound to a free port, and is stopped by the PID started here (SIGTERM; it must then
exit 0). ``openledger datanets serve`` hosts datanets without quality rules; this helper
can give a hosted datanet rules, which are code.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["DatanetServer", "free_port", "start_datanet_server", "wait_healthy"]


@dataclass
class DatanetServer:
    """A running datanet service we started."""

    process: Any
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, datanet: str) -> str:
        """A hosted datanet's URL (for ``RemoteDatanet``)."""
        return f"{self.base_url}/v1/datanets/{datanet}"

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM the process we started and wait; return its exit code."""
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGTERM)
        self.process.join(timeout)
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.join(timeout)
        return self.process.exitcode  # type: ignore[no-any-return]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(locations: list[str], rules: dict[str, list[Any]], port: int) -> None:
    from openledger.data import Datanet
    from openledger.gateway.datanets import DatanetService, run_datanet_server

    opened = [Datanet.open(loc, rules=rules.get(loc, ())) for loc in locations]
    run_datanet_server(DatanetService(opened), port=port, log_level="warning")


def wait_healthy(base_url: str, alive: Any, timeout: float = 120) -> None:
    """Wait until ``base_url/health`` answers 200 (``alive()`` false: it died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the datanet service exited before answering")
        try:
            if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the datanet service did not answer in {timeout} s")


def start_datanet_server(
    locations: list[str], rules: dict[str, list[Any]] | None = None
) -> DatanetServer:
    """Serve ``locations`` (folders or store URLs) in a new process; wait until it answers."""
    port = free_port()
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_serve, args=(locations, rules or {}, port), daemon=True)
    process.start()
    server = DatanetServer(process, port)
    try:
        wait_healthy(server.base_url, process.is_alive)
    except BaseException:
        server.stop()
        raise
    return server
