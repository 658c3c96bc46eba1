"""Over the network: workload "mixed-8" through the gateway vs the same requests in process.

Workload (../shared/BENCHMARKS.md): SmolLM2-135M-Instruct, fp32, CPU; 8 LoRA adapters of
rank 16 on all linear projections with random non-zero weights; 16 concurrent requests,
adapters assigned round-robin; ~16-token prompts; 32 new tokens, greedy, no early stop.

Two paths, alternating for ``--repeats`` rounds after one warm-up each:

* in process: 16 coroutines on one :class:`~openledger.serve.AsyncEngine`
  (``stream_outputs``);
* over HTTP: ``openledger serve`` in its own process (uvicorn on 127.0.0.1, API key,
  metering on: every response is signed and fsync'd into the ledger before its last
  chunk), 16 streaming ``POST /v1/completions`` (server-sent events) from httpx.

Prints the tokens/s of both and their ratio per round (median), time to first token
(TTFT) and inter-token latency (ITL) p50/p99 as each client sees them (an event carrying
text), the machine and its load. The HTTP client runs on the same cores as the server.

Then one request at a time (the same prompts and adapters, 4 new tokens, the two paths
alternating): the TTFT the gateway adds to a request when no batch forms around it
(parsing, authentication, planning, admission, the SSE framing, the client's own HTTP).

Each round also reads the engine's own TTFT of every request (from its arrival in the
engine to its first token: ``RequestOutput.metrics`` in process, the gateway's
``openledger_time_to_first_token_seconds`` histogram, read before and after the round,
over HTTP) and prints what each path adds on top of it, mean per request. Their
difference is the gateway's overhead paired with the work of the same round, without the
round-to-round change in the prefill step's own time (which moves tens of milliseconds
between rounds on shared cores and dominates the p50 difference).

It also prints the same pairing with each round's TTFT p50 in place of the mean (the
acceptance figure: "TTFT overhead p50").

``--client raw`` sends the burst as pre-encoded requests on keep-alive sockets opened
before the first round (and checked with ``GET /health`` before each round's clock
starts), reading the events straight from the chunked body (:class:`RawClient`), to keep
the client's own CPU time, on the cores the server shares, out of the comparison: httpx
takes about a millisecond of CPU to send each request, so its 16th request leaves ~20 ms
after its first on two shared cores, and that wait is the client's, not the gateway's.

    python benchmarks/serve_http.py [--repeats 5] [--threads N] [--model NAME]
        [--batch-window SECONDS] [--client httpx|raw]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
import yaml
from _scratch import scratch_dir
from serve_adapters import NUM_ADAPTERS, make_adapters
from serve_throughput import NEW_TOKENS, load_average, machine, prompts

from openledger.gateway import ReceiptLedger
from openledger.models import resolve_model
from openledger.serve import AsyncEngine, EngineConfig, SamplingParams

ENGINE = {"device": "cpu", "dtype": "float32"}
TTFT_METRIC = "openledger_time_to_first_token_seconds"


@dataclass
class Round:
    """One pass of the 16 requests: wall time and what each client saw."""

    seconds: float = 0.0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    engine_ttft: float = 0.0
    """The engine's own TTFT (arrival in the engine to first token), mean per request."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def added(self) -> float:
        """What the path adds to the engine's own TTFT, mean per request (seconds)."""
        return statistics.mean(self.ttft) - self.engine_ttft

    @property
    def added_p50(self) -> float:
        """The round's TTFT p50 less the engine's own mean TTFT (seconds)."""
        return statistics.median(self.ttft) - self.engine_ttft

    def add(self, start: float, events: Sequence[float], tokens: int) -> None:
        """Record one request: its start and the times its text events arrived."""
        self.tokens += tokens
        if events:
            self.ttft.append(events[0] - start)
            self.itl.extend(later - earlier for earlier, later in itertools.pairwise(events))


async def in_process(engine: AsyncEngine, texts: list[str]) -> Round:
    """The 16 requests as coroutines on the engine."""
    result = Round()
    engine_ttft: list[float] = []

    async def one(index: int) -> None:
        params = SamplingParams(
            max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, adapter=f"a{index % NUM_ADAPTERS}"
        )
        start, events, tokens = time.perf_counter(), [], 0
        async for out in engine.stream_outputs(texts[index], params):
            if out.delta_text:
                events.append(time.perf_counter())
            tokens = len(out.token_ids)
            first = out.metrics.time_to_first_token if out.finished else None
            if first is not None:
                engine_ttft.append(first)
        result.add(start, events, tokens)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(len(texts))))
    result.seconds = time.perf_counter() - start
    result.engine_ttft = statistics.mean(engine_ttft)
    return result


def engine_ttft_total(port: int) -> tuple[float, float]:
    """The gateway's TTFT histogram: (sum of seconds, count of requests)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in (f"{TTFT_METRIC}_sum", f"{TTFT_METRIC}_count"):
            found[name.rsplit("_", 1)[1]] = float(value)
    if set(found) != {"sum", "count"}:
        raise RuntimeError(f"the gateway's /metrics has no {TTFT_METRIC} histogram")
    return found["sum"], found["count"]


def burst_body(texts: list[str], index: int) -> dict[str, Any]:
    """Request ``index`` of the burst: its prompt and adapter, 32 tokens, streamed."""
    return {
        "model": f"a{index % NUM_ADAPTERS}",
        "prompt": texts[index],
        "max_tokens": NEW_TOKENS,
        "min_tokens": NEW_TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def timed_burst(
    count: int, events_of: Callable[[int], AsyncIterator[dict[str, Any]]]
) -> Round:
    """Run requests ``0..count-1`` at once; each one's events come from ``events_of``."""
    result = Round()

    async def one(index: int) -> None:
        start, events, tokens = time.perf_counter(), [], 0
        async for chunk in events_of(index):
            if any(choice.get("text") for choice in chunk["choices"]):
                events.append(time.perf_counter())
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
        result.add(start, events, tokens)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    result.seconds = time.perf_counter() - start
    return result


async def over_http(client: httpx.AsyncClient, texts: list[str]) -> Round:
    """The 16 requests as streaming completions through the gateway."""

    async def events_of(index: int) -> AsyncIterator[dict[str, Any]]:
        body = burst_body(texts, index)
        async with client.stream("POST", "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    yield json.loads(line[6:])

    return await timed_burst(len(texts), events_of)


class RawClient:
    """A lean HTTP/1.1 client: pre-encoded requests on keep-alive connections opened before
    the first round, and server-sent events read straight from the chunked body.

    The client runs on the cores the server and the engine share, so its own time to send
    a burst counts in the gateway's figure; this one does as little as it can per request,
    to tell the two apart. Its connections stay open from round to round, as a client's
    pool does (the server's accepting them is not part of a request).
    """

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.key = key
        self.streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def encode(self, body: dict[str, object]) -> bytes:
        payload = json.dumps(body).encode()
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        return head.encode() + payload

    async def connect(self, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """``count`` open connections, each just checked with ``GET /health`` (the server
        closes a connection idle for a few seconds: a closed one is opened again)."""
        streams = []
        for index in range(count):
            if index == len(self.streams):
                self.streams.append(await self._open())
            try:
                await self._check(self.streams[index])
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self.streams[index][1].close()
                self.streams[index] = await self._open()
                await self._check(self.streams[index])
            streams.append(self.streams[index])
        return streams

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def _check(self, stream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        reader, writer = stream
        writer.write(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
        if b" 200 " not in await reader.readline():
            raise ValueError("the connection did not answer")
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)

    def close(self) -> None:
        for _, writer in self.streams:
            writer.close()
        self.streams.clear()

    @staticmethod
    async def events(
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
    ) -> AsyncIterator[dict[str, Any]]:
        """Send ``request`` and yield each ``data: {...}`` event of the response (read to
        its end, so the connection can carry the next request)."""
        reader, writer = stream
        writer.write(request)
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"the gateway answered {status!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # NOTE: headers; the body is chunked (a stream)
        pending = b""
        while size := int((await reader.readline()).strip() or b"0", 16):
            pending += await reader.readexactly(size + 2)
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.startswith(b"data: {"):
                    yield json.loads(line[6:])
        await reader.readline()  # NOTE: the blank line that ends the chunked body


async def over_raw_http(client: RawClient, texts: list[str]) -> Round:
    """The 16 requests through the gateway with :class:`RawClient`."""
    requests = [client.encode(burst_body(texts, index)) for index in range(len(texts))]
    streams = await client.connect(len(texts))
    return await timed_burst(len(texts), lambda i: client.events(streams[i], requests[i]))


async def one_at_a_time(
    engine: AsyncEngine, client: httpx.AsyncClient, texts: list[str], tokens: int = 4
) -> tuple[list[float], list[float]]:
    """TTFT of each request alone, in process and over HTTP alternately (seconds)."""
    local, remote = [], []
    for index, text in enumerate(texts):
        adapter = f"a{index % NUM_ADAPTERS}"
        params = SamplingParams(max_tokens=tokens, min_tokens=tokens, adapter=adapter)
        start = time.perf_counter()
        async for out in engine.stream_outputs(text, params):
            if out.delta_text and len(local) == index:
                local.append(time.perf_counter() - start)
        body = {
            "model": adapter,
            "prompt": text,
            "max_tokens": tokens,
            "min_tokens": tokens,
            "temperature": 0,
            "stream": True,
        }
        start = time.perf_counter()
        async with client.stream("POST", "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: {") or len(remote) > index:
                    continue
                if any(c.get("text") for c in json.loads(line[6:])["choices"]):
                    remote.append(time.perf_counter() - start)
    return local, remote


def start_gateway(
    model: str, adapters: list[Path], folder: Path, threads: int, batch_window: float
) -> tuple[subprocess.Popen[bytes], int, str]:
    """``openledger serve`` on a free loopback port with a fresh ledger and key."""
    ledger = folder / "ledger.db"
    with ReceiptLedger(ledger) as book:
        key, _ = book.create_key(name="benchmark")
    config = {
        "model": model,
        "adapters": {f"a{i}": str(path) for i, path in enumerate(adapters)},
        "ledger": str(ledger),
        "log_level": "warning",
        "engine": ENGINE,
        "batch_window": batch_window,
    }
    (folder / "gateway.yaml").write_text(yaml.safe_dump(config))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [
        sys.executable,
        "-m",
        "openledger.cli",
        "serve",
        "--config",
        str(folder / "gateway.yaml"),
    ]
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(
        [*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((folder / "server.log").read_text()[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, port, key
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    os.kill(process.pid, signal.SIGKILL)
    raise RuntimeError("the gateway did not start in 300 s")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) in milliseconds."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def measure(
    engine: AsyncEngine, port: int, key: str, texts: list[str], repeats: int, raw: bool
) -> tuple[list[tuple[Round, Round]], tuple[list[float], list[float]]]:
    """Warm both paths up once, then alternate them ``repeats`` times."""
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=300, limits=limits
    ) as client:
        lean = RawClient(port, key)

        async def remote_round() -> Round:
            total, count = engine_ttft_total(port)
            found = await (over_raw_http(lean, texts) if raw else over_http(client, texts))
            total_after, count_after = engine_ttft_total(port)
            if count_after - count != len(texts):
                raise RuntimeError(f"{count_after - count} TTFTs observed for {len(texts)}")
            found.engine_ttft = (total_after - total) / len(texts)
            return found

        await in_process(engine, texts)
        await remote_round()
        rounds = []
        for number in range(repeats):
            if number % 2 == 0:
                local = await in_process(engine, texts)
                remote = await remote_round()
            else:
                remote = await remote_round()
                local = await in_process(engine, texts)
            rounds.append((local, remote))
            print(
                f"round {number + 1}: in process {local.tokens_per_second:.1f} tok/s, "
                f"HTTP {remote.tokens_per_second:.1f} tok/s; TTFT p50 in process "
                f"{percentile(local.ttft, 50):.1f} ms, HTTP {percentile(remote.ttft, 50):.1f} ms",
                flush=True,
            )
        lean.close()
        alone = await one_at_a_time(engine, client, texts * 2)
        return rounds, alone


def report(
    rounds: list[tuple[Round, Round]],
    alone: tuple[list[float], list[float]],
    receipts: int,
    requests: int,
) -> None:
    """Print the medians, ratios and latency percentiles."""
    local_tps = statistics.median(r[0].tokens_per_second for r in rounds)
    remote_tps = statistics.median(r[1].tokens_per_second for r in rounds)
    ratio = statistics.median(r[1].tokens_per_second / r[0].tokens_per_second for r in rounds)
    print(
        f"\nthroughput, median of {len(rounds)} rounds: in process {local_tps:.1f} tok/s, "
        f"HTTP {remote_tps:.1f} tok/s; ratio HTTP / in process {ratio:.3f}x (target >= 0.9x)"
    )
    overheads = []
    pooled = []
    for name, index in (("in process", 0), ("HTTP", 1)):
        ttft = [t for r in rounds for t in r[index].ttft]
        pooled.append(percentile(ttft, 50))
        itl = [t for r in rounds for t in r[index].itl]
        print(
            f"{name:10s}: TTFT p50 {percentile(ttft, 50):.1f} ms "
            f"p99 {percentile(ttft, 99):.1f} ms; "
            f"ITL p50 {percentile(itl, 50):.1f} ms p99 {percentile(itl, 99):.1f} ms"
        )
    for local, remote in rounds:
        overheads.append(percentile(remote.ttft, 50) - percentile(local.ttft, 50))
    print(
        f"TTFT overhead p50 (HTTP - in process, median over rounds): "
        f"{statistics.median(overheads):.1f} ms (target <= 5 ms); pooled p50s of every "
        f"round: {pooled[1] - pooled[0]:.1f} ms"
    )
    added = [(1000 * r[0].added, 1000 * r[1].added) for r in rounds]
    paired = [remote - local for local, remote in added]
    print(
        "added to the engine's own TTFT, mean per request, median over rounds: in process "
        f"{statistics.median(a[0] for a in added):.1f} ms, HTTP "
        f"{statistics.median(a[1] for a in added):.1f} ms; the gateway's overhead paired "
        f"by round {statistics.median(paired):.1f} ms (rounds "
        f"{', '.join(f'{p:.1f}' for p in paired)})"
    )
    paired_p50 = [1000 * (r[1].added_p50 - r[0].added_p50) for r in rounds]
    print(
        "TTFT overhead p50 paired by round (each path's TTFT p50 less the engine's own mean "
        f"TTFT, HTTP minus in process), median over rounds: {statistics.median(paired_p50):.1f}"
        f" ms (target <= 5 ms; rounds {', '.join(f'{p:.1f}' for p in paired_p50)})"
    )
    local, remote = alone
    print(
        f"one request at a time ({len(local)} each): TTFT p50 in process "
        f"{percentile(local, 50):.1f} ms, HTTP {percentile(remote, 50):.1f} ms; the gateway "
        f"adds {percentile(remote, 50) - percentile(local, 50):.1f} ms (p50 difference)"
    )
    print(f"receipts written: {receipts} for {requests} HTTP requests")


def main() -> None:
    """Run both paths and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--batch-window",
        type=float,
        default=0.0015,
        help="the gateway's batch_window in seconds (0: off; default: the gateway's)",
    )
    parser.add_argument(
        "--client",
        choices=("httpx", "raw"),
        default="httpx",
        help="the burst's HTTP client: httpx, or pre-encoded requests on raw sockets "
        "(keeps the client's own CPU time out of the gateway's figure)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = str(resolve_model(args.model).path)
    root = scratch_dir("serve-http-")
    adapters = make_adapters(folder, root)
    texts = prompts()
    process, port, key = start_gateway(args.model, adapters, root, args.threads, args.batch_window)
    try:
        engine = AsyncEngine(args.model, EngineConfig(**ENGINE))
        for index, path in enumerate(adapters):
            engine.engine.add_adapter(f"a{index}", path)
        print(
            f"machine: {machine()}; load average before: {load_average()}; "
            f"gateway batch_window {args.batch_window * 1000:g} ms; client {args.client}",
            flush=True,
        )
        rounds, alone = asyncio.run(
            measure(engine, port, key, texts, args.repeats, args.client == "raw")
        )
        print(f"load average after: {load_average()}")
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    with ReceiptLedger(root / "ledger.db") as ledger:
        receipts = ledger.count_receipts()
    report(rounds, alone, receipts, (args.repeats + 1 + 2) * len(texts))


if __name__ == "__main__":
    main()
