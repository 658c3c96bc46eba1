"""The gateway on a local Ray instance (127.0.0.1, 2 CPUs): 2 engine replicas of a tiny
model with 6 adapters, driven by the official `openai` client.

The test process is Ray's driver: it starts the instance, deploys the application, and
stops both (removing the instance's session folder) when the module is done. The replica
kill test runs last: it leaves a replica restarted.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.gateway.conftest import GatewayModels, start_server

from openledger.gateway.ray.routing import round_robin_loads

pytest.importorskip("ray.serve", reason="the [ray] extra is not installed")
pytest.importorskip("openai", reason="the official openai client is not installed")

ADAPTERS = tuple(f"a{i}" for i in range(6))
# NOTE: 2 sequences and 2 adapter slots per replica (the engine's), and 3 adapters registered
# per replica (host memory, paged through the slots): 6 adapters cannot all be on one replica
ENGINE = {
    "max_num_seqs": 2,
    "max_adapter_slots": 2,
    "kv_cache_memory": 8 * 2**20,
    "max_num_batched_tokens": 2048,
}
RAY = {"replicas": 2, "num_cpus": 0.5, "ingress_num_cpus": 0.5, "adapters_per_replica": 3}


@dataclass
class RayGateway:
    """A running application: its port, keys and ledger."""

    port: int
    key: str
    admin_key: str
    ledger: Path
    adapters: dict[str, Path]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.base_url + "/v1", api_key=self.key, **kwargs)

    def async_client(self, **kwargs: Any) -> Any:
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.base_url + "/v1", api_key=self.key, **kwargs)

    def replicas(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        response = httpx.get(self.base_url + "/v1/replicas", headers=headers, timeout=30)
        response.raise_for_status()
        return dict(response.json())


def make_adapters(base: Path, folder: Path) -> dict[str, Path]:
    """Six rank-4 adapters of ``base`` (different seeds)."""
    from tests.serve.serve_lora_factory import make_peft_adapter

    targets = ["q_proj", "v_proj", "down_proj"]
    return {
        name: make_peft_adapter(base, folder / name, r=4, targets=targets, seed=30 + i)
        for i, name in enumerate(ADAPTERS)
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_ray_gateway(
    base: Path, adapters: dict[str, Path], folder: Path, **ray: Any
) -> Iterator[RayGateway]:
    """Start Ray, deploy the gateway, yield it; stop everything afterwards."""
    import ray as ray_module
    from ray import serve

    from openledger.gateway import GatewayConfig, ReceiptLedger
    from openledger.gateway.ray import build_application

    ledger = folder / "ledger.db"
    with ReceiptLedger(ledger) as book:
        key, _ = book.create_key(name="tests")
        admin_key, _ = book.create_key(name="admin", role="admin")
    ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    session = Path(ray_module._private.worker._global_node.get_session_dir_path())
    try:
        # NOTE: picked once Ray's own processes hold their ports (one of them once took it)
        port = free_port()
        config = GatewayConfig(
            model=str(base),
            served_model_name="tiny",
            adapters={name: str(path) for name, path in adapters.items()},
            ledger=str(ledger),
            port=port,
            drain_timeout=10,
            engine=ENGINE,
            ray={**RAY, **ray},
        )
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(config), name="openledger", route_prefix="/")
        _wait_healthy(f"http://127.0.0.1:{port}")
        yield RayGateway(port, key, admin_key, ledger, adapters)
    finally:
        serve.shutdown()
        ray_module.shutdown()
        shutil.rmtree(session, ignore_errors=True)


def engine_replica_states() -> dict[str, int]:
    """Ray Serve's count of the engine replicas by state (RUNNING, STARTING ...)."""
    from ray import serve

    app = serve.status().applications["openledger"]
    return dict(app.deployments["EngineReplica"].replica_states)


def _wait_healthy(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the gateway on Ray did not answer /health in {timeout} s")


MESSAGES = [{"role": "user", "content": "Tell me about ledgers."}]


def test_the_serve_command_runs_the_gateway_on_ray_and_stops_it(
    gateway_models: GatewayModels, tmp_path: Path
) -> None:
    """``openledger serve --ray``: a local Ray instance with 2 engine replicas behind the
    metering ingress, answering the ``openai`` client; SIGTERM stops it all, exit code 0.
    (First in this module: its own Ray instance runs before the module's.)"""
    ray = {"replicas": 2, "num_cpus": 0.5, "ingress_num_cpus": 0.5}
    server = start_server(
        tmp_path, gateway_models, extra={"ray": ray}, flags=("--ray",), timeout=240
    )
    try:
        client = server.client(max_retries=0, timeout=120)
        replies = [
            client.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=6, temperature=0
            )
            for model in ("tiny", "alpha", "beta", "alpha")
        ]
        assert all(r.choices[0].message.content for r in replies)
        assert replies[1].choices[0].message.content == replies[3].choices[0].message.content
        assert sorted(receipt_ids(server.ledger)) == sorted(r.usage.receipt_id for r in replies)
    finally:
        code = server.stop(signal.SIGTERM, timeout=120)
    assert code == 0, server.output()[-3000:]
    assert "gateway on Ray stopped" in server.output()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.base_url + "/health", timeout=2)


@pytest.fixture(scope="module")
def ray_gateway(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RayGateway]:
    folder = tmp_path_factory.mktemp("ray-gateway")
    adapters = make_adapters(tiny_llama_dir, folder / "adapters")
    yield from start_ray_gateway(tiny_llama_dir, adapters, folder)


@pytest.fixture(scope="module")
def reference(tiny_llama_dir: Path, ray_gateway: RayGateway) -> Any:
    """One in-process engine with the same base model and adapters."""
    from openledger.serve import Engine

    engine = Engine(str(tiny_llama_dir))
    for name, path in ray_gateway.adapters.items():
        engine.add_adapter(name, path)
    return engine


def greedy(reference: Any, prompt: Any, max_tokens: int, adapter: Any = None) -> Any:
    from openledger.serve import SamplingParams

    return reference.generate(prompt, SamplingParams(max_tokens=max_tokens), adapter=adapter)[0]


def receipt_ids(ledger: Path) -> list[str]:
    from openledger.gateway import ReceiptLedger

    with ReceiptLedger(ledger) as book:
        return [signed.receipt.request_id for signed in book.receipts()]


@pytest.mark.parametrize("model", ["tiny", "a0", "a4"])
def test_greedy_answers_equal_one_engine(
    ray_gateway: RayGateway, reference: Any, model: str
) -> None:
    client = ray_gateway.client(max_retries=0, timeout=60)
    reply = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=12, temperature=0
    )
    expected = greedy(reference, MESSAGES, 12, None if model == "tiny" else model)
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.usage.receipt_id in receipt_ids(ray_gateway.ledger)


def test_streamed_mix_and_completions_equal_one_engine(
    ray_gateway: RayGateway, reference: Any
) -> None:
    client = ray_gateway.client(max_retries=0, timeout=60)
    mix = {"a1": 0.7, "a2": 0.3}
    stream = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"adapters": mix},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy(reference, MESSAGES, 10, mix).text
    assert chunks[-1].usage.receipt_id in receipt_ids(ray_gateway.ledger)
    prompts = ["The ledger says", "Tokens are"]
    reply = client.completions.create(model="a5", prompt=prompts, max_tokens=6, temperature=0)
    texts = [choice.text for choice in sorted(reply.choices, key=lambda c: c.index)]
    assert texts == [greedy(reference, p, 6, "a5").text for p in prompts]


def test_choices_of_one_request_are_routed_as_separate_calls(
    ray_gateway: RayGateway, reference: Any
) -> None:
    # NOTE: three choices of one HTTP request for an adapter no replica holds yet: each
    # handle call must be its own request in Ray Serve's router or one is never assigned
    client = ray_gateway.client(max_retries=0, timeout=60)
    reply = client.chat.completions.create(
        model="a3", messages=MESSAGES, max_tokens=5, temperature=0, n=3
    )
    expected = greedy(reference, MESSAGES, 5, "a3").text
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    assert [c.message.content for c in reply.choices] == [expected] * 3


def test_each_handle_call_gets_its_own_internal_request_id() -> None:
    import contextvars

    from ray.serve import context as serve_context

    from openledger.gateway.ray.remote_engine import _own_request

    def within_request() -> list[Any]:
        serve_context._set_request_context(request_id="client-id", _internal_request_id="one")
        seen = [_own_request(serve_context._get_serve_request_context) for _ in range(3)]
        return [*seen, serve_context._get_serve_request_context()]

    *calls, after = contextvars.copy_context().run(within_request)
    assert {c.request_id for c in calls} == {"client-id"}
    ids = [c._internal_request_id for c in calls]
    assert len(set(ids)) == 3
    assert "one" not in ids
    assert after._internal_request_id == "one"  # NOTE: the request's own context is untouched


async def send_all(gateway: RayGateway, sequence: list[str], concurrency: int) -> list[Any]:
    client = gateway.async_client(max_retries=0, timeout=120)
    gate = asyncio.Semaphore(concurrency)

    async def one(model: str) -> Any:
        async with gate:
            return await client.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=8, temperature=0
            )

    try:
        return list(await asyncio.gather(*(one(m) for m in sequence)))
    finally:
        await client.close()


def test_requests_go_to_the_replica_holding_their_adapter(ray_gateway: RayGateway) -> None:
    rng = random.Random(7)
    sequence = [name for name in ADAPTERS for _ in range(8)]
    rng.shuffle(sequence)
    before_receipts = len(receipt_ids(ray_gateway.ledger))
    before = ray_gateway.replicas()["adapter_loads"]
    replies = asyncio.run(send_all(ray_gateway, sequence, concurrency=4))
    loads = ray_gateway.replicas()["adapter_loads"] - before
    baseline = round_robin_loads(sequence, RAY["replicas"], RAY["adapters_per_replica"])
    print(f"adapter loads: {loads} routed, {baseline} round-robin, {len(sequence)} requests")
    # NOTE: each adapter gets one home replica, 3 each: 6 loads, plus one per spill to a
    # replica that does not hold it (its home at max_ongoing_requests); round-robin: 34
    assert loads <= 0.4 * baseline
    ids = receipt_ids(ray_gateway.ledger)
    assert len(ids) == before_receipts + len(sequence)  # NOTE: receipts = requests
    assert {r.usage.receipt_id for r in replies} <= set(ids)


@dataclass
class Outcome:
    """How one request of the kill test ended."""

    kind: str  # "done", "failed" (an error before any token) or "cut" (after tokens)
    receipt_id: str | None = None
    status: int | None = None


async def one_request(client: Any, i: int, on_token: Callable[[], None] | None = None) -> Outcome:
    """Request ``i`` of the load (``on_token`` is called at its first streamed token)."""
    import openai

    model = [*ADAPTERS, "tiny"][i % 7]
    # NOTE: a few long requests keep tokens in flight when the kill lands; the rest are short
    tokens = 48 if i < 24 else 8
    args = {"model": model, "messages": MESSAGES, "max_tokens": tokens, "temperature": 0}
    args["extra_body"] = {"ignore_eos": True}
    received = 0
    try:
        if i % 2:
            reply = await client.chat.completions.create(**args)
            return Outcome("done", reply.usage.receipt_id)
        options = {"include_usage": True}
        stream = await client.chat.completions.create(**args, stream=True, stream_options=options)
        receipt = None
        async for chunk in stream:
            received += sum(bool(c.delta.content) for c in chunk.choices)
            if received and on_token is not None:
                on_token()
                on_token = None
            receipt = chunk.usage.receipt_id if chunk.usage else receipt
        return Outcome("done", receipt)
    except openai.APIStatusError as exc:
        return Outcome("cut" if received else "failed", status=exc.status_code)
    except openai.APIError as exc:  # NOTE: an error event inside a stream
        return Outcome("cut" if received else "failed", status=(exc.body or {}).get("code"))


async def load_with_kill(gateway: RayGateway, victim: int, total: int) -> list[Outcome]:
    """``total`` requests, 6 in flight; the victim is killed when request 0 (streamed, an
    adapter homed on the victim) has its first token, so the kill always hits it mid-stream."""
    client = gateway.async_client(max_retries=0, timeout=120)
    gate = asyncio.Semaphore(6)

    def kill() -> None:
        os.kill(victim, signal.SIGKILL)  # NOTE: a replica of the Ray instance we started

    async def run(i: int) -> Outcome:
        async with gate:
            return await one_request(client, i, kill if i == 0 else None)

    try:
        return list(await asyncio.gather(*(run(i) for i in range(total))))
    finally:
        await client.close()


def test_a_replica_killed_under_load_loses_no_receipt(ray_gateway: RayGateway) -> None:
    from openledger.gateway import ReceiptLedger

    client = ray_gateway.client(max_retries=0, timeout=60)
    for i in range(40):  # NOTE: until both replicas have answered
        seen = {r["replica_id"]: r for r in ray_gateway.replicas()["data"]}
        if len(seen) == 2:
            break
        client.chat.completions.create(model=ADAPTERS[i % 6], messages=MESSAGES, max_tokens=2)
    # NOTE: request 0 of the load asks for ADAPTERS[0]: find the replica that is its home
    counts = {r["replica_id"]: r["requests"] for r in ray_gateway.replicas()["data"]}
    client.chat.completions.create(model=ADAPTERS[0], messages=MESSAGES, max_tokens=2)
    now = {r["replica_id"]: r for r in ray_gateway.replicas()["data"]}
    (victim,) = [r for rid, r in now.items() if r["requests"] > counts.get(rid, 0)]
    before = set(receipt_ids(ray_gateway.ledger))
    outcomes = asyncio.run(load_with_kill(ray_gateway, victim["pid"], total=300))
    kinds = [o.kind for o in outcomes]
    counters = {k: v for k, v in ray_gateway.replicas().items() if k in ("retried", "cut")}
    print("outcomes:", {k: kinds.count(k) for k in set(kinds)}, "choices:", counters)
    # NOTE: "cut" counts choices; a whole response cut is answered 503 ("failed" here)
    assert counters["cut"] + counters["retried"] >= 1, "the kill hit no request in flight"
    assert counters["cut"] >= kinds.count("cut")
    assert {o.status for o in outcomes if o.kind != "done"} <= {503, "engine_dead"}
    with ReceiptLedger(ray_gateway.ledger) as book:
        new = [s.receipt for s in book.receipts() if s.receipt.request_id not in before]
    done = [o.receipt_id for o in outcomes if o.kind == "done"]
    assert None not in done
    assert len({r.request_id for r in new}) == len(new) == len(done) + kinds.count("cut")
    assert set(done) <= {r.request_id for r in new}
    assert sum(r.finish_reason == "abort" for r in new) == kinds.count("cut")
    # the replica comes back and serves again (Ray starts a new one: tens of seconds here)
    fresh: list[dict[str, Any]] = []
    deadline = time.monotonic() + 240
    while not fresh and time.monotonic() < deadline:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
        fresh = [r for r in ray_gateway.replicas()["data"] if r["replica_id"] not in seen]
        time.sleep(0.5)
    assert fresh, "no request reached a restarted replica"
    assert engine_replica_states() == {"RUNNING": 2}
