"""Fair sharing across keys: the virtual-token-counter queue's exact orders, the token
buckets, and a flood from one key against a real server with fairness on and off."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from tests.gateway.conftest import ENGINE, GatewayModels, Server, start_server

from openledger.exceptions import TokenRateLimitError
from openledger.gateway import ReceiptLedger
from openledger.gateway.fairness import COMPLETION_WEIGHT, FairQueue, TokenBuckets

FLOOD, FLOOD_TOKENS, PROBES, PROBE_TOKENS, SEQUENCES = 40, 96, 3, 4, 4


def test_the_smallest_counter_goes_next_and_a_new_key_is_lifted() -> None:
    queue = FairQueue(capacity=2)
    a = [queue.join("a", 1, prompt_tokens=10) for _ in range(3)]
    assert [t.granted for t in a] == [True, True, False]
    assert queue.counters["a"] == 20
    queue.charge("a", 5)
    b = queue.join("b", 1, prompt_tokens=10)
    assert queue.counters["b"] == 20 + 5 * COMPLETION_WEIGHT  # NOTE: lifted to a's, not 0
    assert not b.granted
    queue.charge("a", 1)  # a's requests keep generating: b is now behind
    queue.leave(a[0])
    assert (b.granted, a[2].granted) == (True, False)
    queue.leave(a[1])
    assert a[2].granted
    assert queue.used == 2


def test_ties_go_to_the_earliest_and_waiting_turns_can_leave() -> None:
    queue = FairQueue(capacity=1)
    first = queue.join("a", 1)
    waiting = [queue.join("b", 1), queue.join("c", 1), queue.join("b", 1)]
    assert queue.num_waiting == 3
    queue.leave(waiting[0])  # NOTE: its client went away before its turn
    queue.leave(first)
    assert [t.granted for t in waiting] == [False, True, False]
    assert queue.num_waiting == 1


def test_a_request_larger_than_capacity_runs_alone_and_disabled_grants_everything() -> None:
    queue = FairQueue(capacity=2)
    big = queue.join("a", 5)
    small = queue.join("b", 1)
    assert (big.granted, small.granted) == (True, False)
    queue.leave(big)
    assert small.granted
    off = FairQueue(capacity=1, enabled=False)
    assert all(off.join("a", 3).granted for _ in range(10))


def test_token_buckets_refill_and_say_when_to_retry() -> None:
    now = [0.0]
    buckets = TokenBuckets(60, clock=lambda: now[0])
    buckets.check("k")
    buckets.charge("k", 70)
    with pytest.raises(TokenRateLimitError) as caught:
        buckets.check("k")
    assert caught.value.retry_after == 11  # NOTE: 1 token/s from -10 to above 0
    buckets.check("other")
    now[0] = 11.0
    buckets.check("k")
    assert buckets.level("k") == pytest.approx(1.0)
    now[0] = 1000.0
    assert buckets.level("k") == 60
    TokenBuckets(None).check("k")


@dataclass
class Run:
    flood_seconds: float
    probe_seconds: list[float]


@pytest.fixture(scope="module")
def servers(
    gateway_models: GatewayModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[bool, tuple[Server, str]]]:
    """Two gateways whose engines run 4 sequences at once: fair sharing on and off."""
    started: dict[bool, tuple[Server, str]] = {}
    try:
        for fair in (True, False):
            folder = tmp_path_factory.mktemp(f"fair-{fair}")
            extra = {
                "adapters": {},
                "engine": {**ENGINE, "max_num_seqs": SEQUENCES},
                "limits": {"fair_share": fair},
            }
            server = start_server(folder, gateway_models, extra=extra)
            with ReceiptLedger(server.ledger) as ledger:
                probe_key, _ = ledger.create_key(name="probe")
            started[fair] = (server, probe_key)
        yield started
    finally:
        for server, _ in started.values():
            server.stop()


async def _flood_and_probe(server: Server, probe_key: str) -> Run:
    def body(tokens: int) -> dict[str, object]:
        return {"model": "tiny", "prompt": "Go", "max_tokens": tokens, "ignore_eos": True}

    async def one(client: httpx.AsyncClient, key: str, tokens: int) -> float:
        start = time.monotonic()
        response = await client.post(
            "/v1/completions", json=body(tokens), headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200, response.text
        return time.monotonic() - start

    limits = httpx.Limits(max_connections=FLOOD + PROBES + 2)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120, limits=limits) as client:
        start = time.monotonic()
        flood = [asyncio.ensure_future(one(client, server.key, FLOOD_TOKENS)) for _ in range(FLOOD)]
        await _until_admitted(client, server.key, FLOOD)
        probes = await asyncio.gather(
            *(one(client, probe_key, PROBE_TOKENS) for _ in range(PROBES))
        )
        await asyncio.gather(*flood)
        return Run(time.monotonic() - start, list(probes))


async def _until_admitted(client: httpx.AsyncClient, key: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = (await client.get("/metrics")).text
        line = next(ln for ln in text.splitlines() if ln.startswith("openledger_http_requests_in"))
        if float(line.split()[-1]) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the flood of {count} requests was not admitted in 30 s")


def test_a_flood_from_one_key_leaves_another_keys_latency_bounded(
    servers: dict[bool, tuple[Server, str]],
) -> None:
    runs = {fair: asyncio.run(_flood_and_probe(*servers[fair])) for fair in (True, False)}
    fair, fifo = runs[True], runs[False]
    # One round of the flood (SEQUENCES long requests side by side) bounds a probe's wait;
    # the flood takes FLOOD / SEQUENCES = 10 rounds.
    one_round = fair.flood_seconds * SEQUENCES / FLOOD
    summary = f"fair {fair}, first come first served {fifo}, one round {one_round:.2f} s"
    assert max(fair.probe_seconds) < 3 * one_round, summary
    assert max(fair.probe_seconds) < 0.35 * fair.flood_seconds, summary
    assert max(fifo.probe_seconds) > 0.6 * fifo.flood_seconds, summary
    assert max(fair.probe_seconds) < 0.5 * max(fifo.probe_seconds), summary
    print(summary)
