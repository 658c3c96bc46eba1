"""The gateway's ASGI application in process: its direct generation routes answer as FastAPI
would, and API keys are looked up once per key however many requests carry them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send
from tests.gateway.conftest import ENGINE, GatewayModels
from tests.serve.test_serve_adapters_store import count_reads

from openledger.exceptions import AuthenticationError
from openledger.gateway import GatewayConfig, ReceiptLedger
from openledger.gateway.app import GatewayAPI
from openledger.gateway.server import create_app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

T = TypeVar("T")


class CountingMiddleware:
    """Counts the requests it sees and marks their responses."""

    def __init__(self, app: ASGIApp, seen: list[str]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.seen.append(scope["path"])

        async def marked(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-seen", b"1")]
            await send(message)

        await self.app(scope, receive, marked)


@dataclass
class InProcess:
    """The app, an API key, and the one event loop its engine runs on."""

    app: GatewayAPI
    key: str
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)


def app_config(models: GatewayModels, folder: Path) -> tuple[GatewayConfig, str]:
    """A gateway over the tiny model and its two adapters, and an API key of its ledger."""
    ledger = folder / "ledger.db"
    with ReceiptLedger(ledger) as book:
        key, _ = book.create_key(name="tests")
    config = GatewayConfig(
        model=str(models.base),
        served_model_name="tiny",
        adapters={name: str(path) for name, path in models.adapters.items()},
        ledger=ledger,
        operator_key_file=folder / "operator.key",
        engine=ENGINE,
    )
    return config, key


@pytest.fixture(scope="module")
def gateway(
    gateway_models: GatewayModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcess]:
    config, key = app_config(gateway_models, tmp_path_factory.mktemp("gateway-app"))
    app = create_app(config)
    assert isinstance(app, GatewayAPI)
    loop = asyncio.new_event_loop()
    yield InProcess(app, key, loop)
    loop.run_until_complete(app.state.gateway.shutdown())
    loop.close()


GREEDY = {"temperature": 0, "max_tokens": 3}
CASES: list[tuple[str, dict[str, Any], bool, int]] = [
    ("/v1/completions", {"model": "tiny", "prompt": "hi", **GREEDY}, True, 200),
    (
        "/v1/completions",
        {"model": "alpha", "prompt": [1, 2, 3], **GREEDY},
        True,
        200,
    ),
    (
        "/v1/chat/completions",
        {"model": "beta", "messages": [{"role": "user", "content": "hi"}], **GREEDY},
        True,
        200,
    ),
    ("/v1/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 4}, False, 401),
    ("/v1/completions", {"model": "nobody", "prompt": "hello"}, True, 404),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "best_of": 3}, True, 400),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "temperature": -1}, True, 400),
    ("/v1/chat/completions", {"model": "tiny", "messages": "not a list"}, True, 400),
]


async def _answers(app: ASGIApp, key: str, root: str = "") -> list[tuple[int, Any]]:
    transport = httpx.ASGITransport(app=app, root_path=root)
    answers = []
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        for path, body, with_key, _ in CASES:
            headers = {"Authorization": f"Bearer {key}"} if with_key else {}
            response = await client.post(root + path, json=body, headers=headers)
            payload = response.json()
            if response.status_code == 200:
                # NOTE: ids, times and receipt ids differ between two runs of one request
                payload = [c.get("text") or c["message"]["content"] for c in payload["choices"]]
            answers.append((response.status_code, payload))
    return answers


@contextmanager
def counted_by_middleware(app: GatewayAPI) -> Iterator[list[str]]:
    """``app`` with :class:`CountingMiddleware` added (so every route goes through FastAPI);
    yields the paths it sees."""
    seen: list[str] = []
    app.middleware_stack = None  # NOTE: built by an earlier test; add_middleware refuses then
    app.add_middleware(CountingMiddleware, seen=seen)
    try:
        yield seen
    finally:
        app.user_middleware.clear()
        app.middleware_stack = None


def test_direct_routes_answer_as_fastapi_does(
    gateway: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi import FastAPI

    through: list[str] = []
    fastapi_call = FastAPI.__call__

    async def counted(self: FastAPI, scope: Scope, receive: Receive, send: Send) -> None:
        through.append(scope["path"])
        await fastapi_call(self, scope, receive, send)

    monkeypatch.setattr(FastAPI, "__call__", counted)
    direct = gateway.run(_answers(gateway.app, gateway.key))
    mounted = gateway.run(_answers(gateway.app, gateway.key, root="/gateway"))
    assert through == []  # NOTE: neither went through FastAPI
    assert [status for status, _ in direct] == [case[3] for case in CASES]
    assert mounted == direct
    with counted_by_middleware(gateway.app) as seen:
        through_fastapi = gateway.run(_answers(gateway.app, gateway.key))
    assert through_fastapi == direct
    assert seen == through == [path for path, *_ in CASES]


def test_added_middleware_sees_the_generation_routes(gateway: InProcess) -> None:
    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://g") as client:
            body = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
            headers = {"Authorization": f"Bearer {gateway.key}"}
            return await client.post("/v1/completions", json=body, headers=headers)

    with counted_by_middleware(gateway.app) as seen:
        response = gateway.run(post())
    assert response.status_code == 200
    assert response.headers["x-seen"] == "1"
    assert seen == ["/v1/completions"]


def test_a_key_is_looked_up_once_however_many_requests_carry_it(
    gateway: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, state = gateway.key, gateway.app.state.gateway
    lookups: list[str] = []
    find = state.ledger.find_key

    def counted(raw: str) -> Any:
        lookups.append(raw)
        time.sleep(0.05)  # NOTE: a slow ledger: every request below arrives during it
        return find(raw)

    monkeypatch.setattr(state.ledger, "find_key", counted)

    async def burst() -> list[Any]:
        state._keys.clear()
        return await asyncio.gather(*(state.authenticate(f"Bearer {key}") for _ in range(20)))

    callers = gateway.run(burst())
    assert len(lookups) == 1
    assert len({(c.key_id, c.payer) for c in callers}) == 1


def test_a_key_in_use_is_refreshed_ahead_and_a_revoked_one_refused(
    gateway: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openledger.gateway import state as state_module

    state = gateway.app.state.gateway
    key, record = state.ledger.create_key(name="refreshed")
    lookups: list[str] = []
    find = state.ledger.find_key

    def counted(raw: str) -> Any:
        lookups.append(raw)
        return find(raw)

    monkeypatch.setattr(state.ledger, "find_key", counted)
    clock = [1000.0]
    fake_time = SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    monkeypatch.setattr(state_module, "time", fake_time)
    cache = state_module._KEY_CACHE_SECONDS
    header = f"Bearer {key}"

    async def background_lookups() -> None:
        await asyncio.gather(*list(state._key_lookups.values()))

    async def scenario() -> None:
        await state.authenticate(header)
        assert len(lookups) == 1
        clock[0] += 0.6 * cache  # NOTE: past half the cache time: answered, then refreshed
        await state.authenticate(header)
        await background_lookups()
        assert len(lookups) == 2
        clock[0] += 0.4 * cache  # NOTE: the refresh renewed it: still fresh, no lookup
        await state.authenticate(header)
        assert not state._key_lookups
        assert len(lookups) == 2
        assert state.ledger.revoke_key(record.key_id)
        clock[0] += 1.1 * cache  # NOTE: the cache time is up: the revocation is seen
        with pytest.raises(AuthenticationError):
            await state.authenticate(header)
        assert len(lookups) == 3

    gateway.run(scenario())


def test_the_server_keeps_start_up_objects_out_of_collections() -> None:
    import gc

    from openledger.gateway.server import _freeze_startup_objects

    before = gc.get_freeze_count()
    try:
        _freeze_startup_objects()
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_configured_adapters_are_read_before_the_first_request(
    gateway_models: GatewayModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = count_reads(monkeypatch)
    config, key = app_config(gateway_models, tmp_path)
    app = create_app(config)
    loop = asyncio.new_event_loop()
    try:
        state = app.state.gateway
        engine_names = sorted(s.engine_name for s in state.adapters.current.values())
        assert sorted(reads) == engine_names  # NOTE: read once each, at start-up
        reads.clear()
        body = {"model": "alpha", "prompt": "hi", **GREEDY}

        async def post() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://g") as client:
                headers = {"Authorization": f"Bearer {key}"}
                return await client.post("/v1/completions", json=body, headers=headers)

        assert loop.run_until_complete(post()).status_code == 200
        assert reads == []  # NOTE: the first request read nothing from disk
    finally:
        loop.run_until_complete(app.state.gateway.shutdown())
        loop.close()


def test_an_adapter_unreadable_at_start_up_does_not_stop_the_server(
    gateway_models: GatewayModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openledger.exceptions import AdapterFormatError
    from openledger.serve.adapters import AdapterStore

    def unreadable(self: AdapterStore, names: Any) -> list[str]:
        raise AdapterFormatError("the weights changed since registration")

    monkeypatch.setattr(AdapterStore, "warm", unreadable)
    config, _ = app_config(gateway_models, tmp_path)
    app = create_app(config)
    loop = asyncio.new_event_loop()
    try:
        assert sorted(app.state.gateway.adapters.current) == ["alpha", "beta"]
    finally:
        loop.run_until_complete(app.state.gateway.shutdown())
        loop.close()
