"""Adapter lifecycle over HTTP on a real server: load, list, replace under load, delete,
load on first request, refused sources, admin keys, and tokens-per-minute limits."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.gateway.conftest import GatewayModels, Server, receipts_in, start_server

from openledger.exceptions import AdapterSourceError
from openledger.gateway import ReceiptLedger

openai = pytest.importorskip("openai")

TARGETS = ["q_proj", "v_proj", "down_proj"]
TOKENS_PER_MINUTE = 1000


def _adapter(base: Path, out: Path, seed: int) -> Path:
    from tests.serve.serve_lora_factory import make_peft_adapter

    return make_peft_adapter(base, out, r=4, targets=TARGETS, seed=seed)


@pytest.fixture(scope="module")
def sources(
    gateway_models: GatewayModels, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """New adapters to load, a second version of alpha, a resolver folder, a broken one."""
    root = tmp_path_factory.mktemp("lifecycle")
    resolver = root / "resolver"
    broken = root / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    return {
        "gamma": _adapter(gateway_models.base, root / "gamma", 21),
        "alpha2": _adapter(gateway_models.base, root / "alpha2", 22),
        "delta": _adapter(gateway_models.base, resolver / "delta", 23),
        "resolver": resolver,
        "broken": broken,
    }


@pytest.fixture(scope="module")
def admin_server(
    gateway_models: GatewayModels,
    sources: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    extra = {
        "adapters": {"alpha": str(gateway_models.adapters["alpha"])},
        "adapter_resolver": str(sources["resolver"]),
        "limits": {"tokens_per_minute": TOKENS_PER_MINUTE},
    }
    running = start_server(tmp_path_factory.mktemp("gateway-admin"), gateway_models, extra=extra)
    yield running
    running.stop()


def new_key(server: Server, *, admin: bool = False) -> str:
    with ReceiptLedger(server.ledger) as ledger:
        key, _ = ledger.create_key(role="admin" if admin else "user", name="lifecycle")
    return key


@pytest.fixture(scope="module")
def admin(admin_server: Server) -> str:
    return new_key(admin_server, admin=True)


def call(
    server: Server, method: str, path: str, key: str | None, body: Any = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, server.base_url + path, json=body, headers=headers, timeout=60)


def models(server: Server) -> dict[str, Any]:
    return {m["id"]: m for m in server.get("/v1/models").json()["data"]}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def test_adapter_endpoints_need_an_admin_key(
    admin_server: Server, sources: dict[str, Path]
) -> None:
    body = {"name": "gamma", "source": str(sources["gamma"])}
    user = new_key(admin_server)
    requests = [
        ("POST", "/v1/adapters", body),
        ("PUT", "/v1/adapters/gamma", {"source": str(sources["gamma"])}),
        ("DELETE", "/v1/adapters/alpha", None),
        ("GET", "/v1/adapters", None),
    ]
    for method, path, payload in requests:
        for key, status in ((None, 401), ("olk-unknown", 401), (user, 403)):
            response = call(admin_server, method, path, key, payload)
            assert response.status_code == status, (method, path, response.text)
            assert error_of(response)["code"] in ("invalid_api_key", "permission_denied")
    assert set(models(admin_server)) == {"tiny", "alpha"}


def test_load_use_list_and_delete(
    admin_server: Server, admin: str, sources: dict[str, Path]
) -> None:
    body = {"name": "gamma", "source": str(sources["gamma"])}
    loaded = call(admin_server, "POST", "/v1/adapters", admin, body)
    assert loaded.status_code == 201, loaded.text
    adapter_id = loaded.json()["adapter_id"]
    assert models(admin_server)["gamma"]["adapter_id"] == adapter_id
    listed = call(admin_server, "GET", "/v1/adapters", admin).json()["data"]
    assert {a["id"]: a["source"] for a in listed}["gamma"] == str(sources["gamma"])
    again = call(admin_server, "POST", "/v1/adapters", admin, body)
    assert again.status_code == 409
    assert error_of(again)["code"] == "adapter_exists"

    client = admin_server.client(key=new_key(admin_server))
    reply = client.completions.create(model="gamma", prompt="Hi", max_tokens=3, temperature=0)
    usage = reply.usage.model_dump()
    assert [(a["name"], a["adapter_id"]) for a in usage["adapters"]] == [("gamma", adapter_id)]

    deleted = call(admin_server, "DELETE", "/v1/adapters/gamma", admin)
    assert deleted.status_code == 200
    assert deleted.json()["deleted"] is True
    assert "gamma" not in models(admin_server)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gamma", prompt="Hi", max_tokens=3)
    assert call(admin_server, "DELETE", "/v1/adapters/gamma", admin).status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"source": "/no/such/adapter"}, 404, "source", "adapter_source_not_found"),
        ({"source": "https://127.0.0.1/a.tar.gz"}, 400, "source", "adapter_source_refused"),
        ({"source": "https://10.0.0.8/a.tar.gz"}, 400, "source", "adapter_source_refused"),
        ({"source": "http://example.com/a.tar.gz"}, 400, "source", "adapter_source_refused"),
        ({"source": "BROKEN"}, 400, "source", "adapter_format_invalid"),
        ({"source": "ALPHA2", "sha256": "ab" * 32}, 400, "sha256", "adapter_source_refused"),
        (
            {"source": "https://e.com/a.tgz", "sha256": "xyz"},
            400,
            "sha256",
            "adapter_source_refused",
        ),
        (
            {"source": "ALPHA2", "adapter_id": "0x" + "11" * 32},
            400,
            "adapter_id",
            "adapter_id_mismatch",
        ),
        ({"source": "ALPHA2", "adapter_id": "nope"}, 400, "adapter_id", None),
        ({"source": "ALPHA2", "tools": []}, 400, "tools", None),
    ],
)
def test_bad_sources_get_4xx_and_change_nothing(
    admin_server: Server,
    admin: str,
    sources: dict[str, Path],
    body: dict[str, Any],
    status: int,
    param: str,
    code: str | None,
) -> None:
    named = {"BROKEN": str(sources["broken"]), "ALPHA2": str(sources["alpha2"])}
    body = {**body, "source": named.get(body["source"], body["source"])}
    before = models(admin_server)
    for method, path, payload in (
        ("POST", "/v1/adapters", {"name": "epsilon", **body}),
        ("PUT", "/v1/adapters/alpha", body),  # NOTE: a refused replacement keeps the old one
    ):
        response = call(admin_server, method, path, admin, payload)
        assert response.status_code == status, response.text
        error = error_of(response)
        assert (error["param"], error["code"]) == (param, code)
    assert models(admin_server) == before


def test_a_sha256_mismatch_is_named() -> None:
    from openledger.gateway.errors import adapter_http_error
    from openledger.serve.adapters.fetch import AdapterSourcePolicy, download

    client = httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=b"x"))
    )
    with pytest.raises(AdapterSourceError) as caught:
        download("https://e.com/a.tgz", Path("/dev/null"), AdapterSourcePolicy(), client, "0" * 64)
    error = adapter_http_error(caught.value)
    assert error.status == 400
    assert (error.body["error"]["param"], error.body["error"]["code"]) == (
        "sha256",
        "sha256_mismatch",
    )


def test_replace_under_load_keeps_old_requests_on_old_weights(
    admin_server: Server, admin: str, sources: dict[str, Path]
) -> None:
    client = admin_server.client(key=new_key(admin_server), max_retries=0)
    ask = {"model": "alpha", "prompt": "The ledger", "temperature": 0, "max_tokens": 480}
    extra = {"ignore_eos": True}
    old_text = client.completions.create(**ask, extra_body=extra).choices[0].text
    old_id = models(admin_server)["alpha"]["adapter_id"]

    stream = client.completions.create(  # NOTE: n=4 keeps it running past the swap
        **ask, n=4, stream=True, stream_options={"include_usage": True}, extra_body=extra
    )
    pieces = iter(stream)
    first = next(pieces)
    swapped = call(
        admin_server, "PUT", "/v1/adapters/alpha", admin, {"source": str(sources["alpha2"])}
    )
    assert swapped.status_code == 200, swapped.text
    new_id = swapped.json()["adapter_id"]
    assert swapped.json()["replaced_adapter_id"] == old_id != new_id
    assert swapped.json()["replaced_in_flight"] == 1  # NOTE: the stream was running at the swap
    assert models(admin_server)["alpha"]["adapter_id"] == new_id

    results: list[Any] = []
    other = admin_server.client(key=new_key(admin_server), max_retries=0)  # NOTE: own budget
    newer = threading.Thread(
        target=lambda: results.append(other.completions.create(**ask, extra_body=extra))
    )
    newer.start()
    chunks = [first, *pieces]
    newer.join(timeout=60)
    texts = [
        "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i)
        for i in range(4)
    ]
    usage = next(c.usage for c in chunks if c.usage is not None).model_dump()
    assert texts == [old_text] * 4
    assert [a["adapter_id"] for a in usage["adapters"]] == [old_id]
    assert results[0].choices[0].text != old_text
    assert [a["adapter_id"] for a in results[0].usage.model_dump()["adapters"]] == [new_id]
    by_id = {r["receipt"]["request_id"]: r["receipt"] for r in receipts_in(admin_server.ledger)}
    assert by_id[usage["receipt_id"]]["adapter_ids"] == [old_id]


def test_unknown_names_load_on_first_request_through_the_resolver(admin_server: Server) -> None:
    client = admin_server.client(key=new_key(admin_server))
    assert "delta" not in models(admin_server)
    reply = client.completions.create(model="delta", prompt="Hi", max_tokens=2, temperature=0)
    assert [a["name"] for a in reply.usage.model_dump()["adapters"]] == ["delta"]
    assert models(admin_server)["delta"]["adapter_id"].startswith("0x")
    for name in ("nothing-here", "../resolver/delta"):
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=name, prompt="Hi", max_tokens=2)


def test_a_key_over_its_tokens_per_minute_gets_429_with_retry_after(admin_server: Server) -> None:
    key = new_key(admin_server)
    body = {"model": "tiny", "prompt": "Count", "max_tokens": 300, "ignore_eos": True}
    statuses = []
    for _ in range(8):
        response = admin_server.post("/v1/completions", body, key=key)
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
    assert statuses[:3] == [200, 200, 200], statuses
    assert statuses[-1] == 429, statuses
    assert int(response.headers["Retry-After"]) >= 1
    assert error_of(response)["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        admin_server.client(key=key, max_retries=0).completions.create(
            model="tiny", prompt="x", max_tokens=1
        )
    other = admin_server.client(key=new_key(admin_server))
    assert other.completions.create(model="tiny", prompt="x", max_tokens=1).choices


def test_a_restarted_gateway_serves_what_the_admin_api_loaded(
    gateway_models: GatewayModels, sources: dict[str, Path], tmp_path: Path
) -> None:
    """Adapters loaded or replaced through /v1/adapters survive kill -9 and a restart with
    the same ids; a deleted one stays deleted; one whose source now holds other weights is
    not served (its receipts would name the wrong id); the configuration decides its own
    names."""
    import shutil
    import signal

    first = start_server(tmp_path / "one", gateway_models)
    key = new_key(first, admin=True)
    ids = {}
    try:
        for name, source in (("gamma", sources["gamma"]), ("zeta", sources["alpha2"])):
            loaded = call(first, "POST", "/v1/adapters", key, {"name": name, "source": str(source)})
            assert loaded.status_code == 201, loaded.text
            ids[name] = loaded.json()["adapter_id"]
        moved = tmp_path / "moving"
        shutil.copytree(sources["gamma"], moved)
        loaded = call(first, "POST", "/v1/adapters", key, {"name": "eta", "source": str(moved)})
        assert loaded.status_code == 201, loaded.text
        configured = models(first)["alpha"]["adapter_id"]
        replaced = call(first, "PUT", "/v1/adapters/alpha", key, {"source": str(sources["alpha2"])})
        assert replaced.status_code == 200, replaced.text
        assert call(first, "DELETE", "/v1/adapters/zeta", key).status_code == 200
    finally:
        first.stop(signal.SIGKILL)
    shutil.rmtree(moved)
    shutil.copytree(sources["alpha2"], moved)  # eta's source now holds other weights

    second = start_server(tmp_path / "two", gateway_models, ledger=first.ledger, key=key)
    try:
        served = models(second)
        assert set(served) == {"tiny", "alpha", "beta", "gamma"}
        assert served["gamma"]["adapter_id"] == ids["gamma"]
        assert served["alpha"]["adapter_id"] == configured  # the configuration's version
        reply = second.client(key=key).completions.create(
            model="gamma", prompt="Hi", max_tokens=2, temperature=0
        )
        assert reply.usage.model_dump()["adapters"][0]["adapter_id"] == ids["gamma"]
    finally:
        second.stop()
    with ReceiptLedger(first.ledger) as ledger:
        assert [row[0] for row in ledger.saved_adapters()] == ["gamma"]
    log = second.output()
    assert "eta could not be served again" in log
    assert "the configuration names it" in log


def test_restore_adapters_on_a_serving_engine(
    gateway_models: GatewayModels, sources: dict[str, Path], tmp_path: Path
) -> None:
    """The path a Ray ingress takes (the engine serves already): saved registrations load
    through ``ServedAdapters.put`` with their ids pinned."""
    import asyncio

    from openledger.gateway.adapters import ServedAdapters
    from openledger.gateway.server import restore_adapters
    from openledger.serve import AsyncEngine, EngineConfig
    from openledger.types import to_hash32

    async def scenario() -> tuple[dict[str, str], str]:
        engine = AsyncEngine(gateway_models.base, EngineConfig(block_size=4, num_blocks=64))
        try:
            served = ServedAdapters(engine, None, drain_timeout=5)
            with ReceiptLedger(tmp_path / "ledger.db") as ledger:
                ids = {}
                for name in ("gamma", "alpha2"):
                    spec = engine.engine.add_adapter(f"probe-{name}", sources[name])
                    ids[name] = to_hash32(spec.adapter_id or spec.weights_hash)
                ledger.save_adapter("gamma", str(sources["gamma"]), ids["gamma"], None)
                ledger.save_adapter("wrong", str(sources["gamma"]), ids["alpha2"], None)
                ledger.save_adapter("alpha", str(sources["alpha2"]), ids["alpha2"], None)
                await restore_adapters(served, ledger, {"alpha": "configured elsewhere"})
                assert [row[0] for row in ledger.saved_adapters()] == ["gamma"]
                return {name: a.adapter_id for name, a in served.current.items()}, ids["gamma"]
        finally:
            await engine.close()

    current, gamma = asyncio.run(scenario())
    assert current == {"gamma": gamma}  # "wrong" holds other weights; "alpha" is configured
