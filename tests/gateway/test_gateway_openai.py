"""A real `openledger serve` on 127.0.0.1, driven by the official `openai` client."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tests.gateway.conftest import GatewayModels, Server

from openledger.crypto import Account
from openledger.gateway import SignedGatewayReceipt, receipt_domain

openai = pytest.importorskip("openai")

MESSAGES = [{"role": "user", "content": "Tell me about ledgers."}]
PROMPTS = ["The ledger says", "Tokens are"]


@pytest.fixture(scope="module")
def reference(gateway_models: GatewayModels) -> Any:
    """The in-process engine with the same base model and adapters."""
    from openledger.serve import Engine

    engine = Engine(str(gateway_models.base))
    for name, path in gateway_models.adapters.items():
        engine.add_adapter(name, path)
    return engine


def greedy(reference: Any, prompt: Any, max_tokens: int, adapter: Any = None, **kw: Any) -> Any:
    from openledger.serve import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, **kw)
    return reference.generate(prompt, params, adapter=adapter)[0]


def operator_of(server: Server) -> str:
    path = Path(str(server.ledger) + ".operator-key")
    return Account.from_key(path.read_text().strip()).address


def verified_receipt(server: Server, receipt_id: str) -> SignedGatewayReceipt:
    """Fetch a receipt as its payer and check it is signed by the gateway's operator."""
    response = server.get(f"/v1/receipts/{receipt_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body.pop("signer") == operator_of(server)
    body.pop("domain")
    signed = SignedGatewayReceipt.model_validate(body)
    signed.verify(operator_of(server), receipt_domain(1))
    return signed


@pytest.mark.parametrize(("model", "adapter"), [("tiny", None), ("alpha", "alpha")])
def test_chat_greedy_equals_the_engine(
    server: Server, reference: Any, model: str, adapter: str | None
) -> None:
    reply = server.client().chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=12, temperature=0
    )
    expected = greedy(reference, MESSAGES, 12, adapter)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == "length"
    usage = reply.usage.model_dump()
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        len(expected.prompt_token_ids),
        len(expected.token_ids),
    )
    signed = verified_receipt(server, usage["receipt_id"])
    assert signed.receipt.completion_tokens == 12
    assert reply.id.endswith(signed.receipt.request_id[2:])
    expected_adapters = [] if adapter is None else [adapter]
    assert [a["name"] for a in usage["adapters"]] == expected_adapters


def test_weighted_mix_streams_what_the_engine_generates(server: Server, reference: Any) -> None:
    mix = {"alpha": 0.7, "beta": 0.3}
    stream = server.client().chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        logprobs=True,
        top_logprobs=2,
        extra_body={"adapters": mix},
    )
    text, tokens, usage = "", 0, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs is not None:
                tokens += len(choice.logprobs.content)
                assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    assert text == greedy(reference, MESSAGES, 10, mix).text
    assert usage is not None
    assert tokens == usage["completion_tokens"] == 10
    assert {a["name"]: a["weight"] for a in usage["adapters"]} == mix
    signed = verified_receipt(server, usage["receipt_id"])
    assert signed.receipt.completion_tokens == tokens
    assert signed.receipt.adapters == mix


def test_completions_list_prompt_n_and_logprobs(server: Server, reference: Any) -> None:
    reply = server.client().completions.create(
        model="beta", prompt=PROMPTS, max_tokens=6, temperature=0, n=2, logprobs=3
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for choice in reply.choices:
        expected = greedy(reference, PROMPTS[choice.index // 2], 6, "beta")
        assert choice.text == expected.text
        assert len(choice.logprobs.tokens) == 6
        assert all(len(top) <= 3 for top in choice.logprobs.top_logprobs)
    usage = reply.usage.model_dump()
    prompt_tokens = sum(len(greedy(reference, p, 1, "beta").prompt_token_ids) for p in PROMPTS)
    assert usage["prompt_tokens"] == prompt_tokens  # NOTE: each prompt once, whatever n is
    assert usage["completion_tokens"] == 24
    assert verified_receipt(server, usage["receipt_id"]).receipt.completion_tokens == 24


def test_stop_strings_end_the_answer(server: Server, reference: Any) -> None:
    full = greedy(reference, PROMPTS[0], 12).text
    stop = full[3:5]
    assert stop
    assert full.index(stop) >= 1
    reply = server.client().completions.create(
        model="tiny", prompt=PROMPTS[0], max_tokens=12, temperature=0, stop=[stop]
    )
    assert reply.choices[0].text == full[: full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_sampled_n_with_a_seed_repeats_and_differs(server: Server) -> None:
    def sample() -> list[str]:
        reply = server.client().completions.create(
            model="tiny", prompt=PROMPTS[1], max_tokens=8, temperature=1.0, n=3, seed=5
        )
        return [c.text for c in reply.choices]

    first = sample()
    assert sample() == first
    assert len(set(first)) > 1


def test_async_streaming_clients(server: Server, reference: Any) -> None:
    async def one(client: Any, prompt: str) -> str:
        stream = await client.completions.create(
            model="alpha", prompt=prompt, max_tokens=8, temperature=0, stream=True
        )
        return "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])

    async def main() -> list[str]:
        async with server.async_client() as client:
            return await asyncio.gather(*(one(client, p) for p in PROMPTS))

    assert asyncio.run(main()) == [greedy(reference, p, 8, "alpha").text for p in PROMPTS]


def test_models_and_health(server: Server) -> None:
    models = server.client().models.list()
    ids = {m.id: m.model_dump() for m in models.data}
    assert set(ids) == {"tiny", "alpha", "beta"}
    assert ids["alpha"]["parent"] == "tiny"
    assert ids["alpha"]["adapter_id"].startswith("0x")
    assert server.get("/health").json() == {"status": "ok"}


def _error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def test_bad_keys_get_401(server: Server) -> None:
    import httpx

    body = {"model": "tiny", "messages": MESSAGES}
    url = server.base_url + "/v1/chat/completions"
    responses = [
        server.post("/v1/chat/completions", body, key="olk-not-a-key"),
        httpx.post(url, json=body, timeout=30),
        httpx.post(url, json=body, headers={"Authorization": "Basic abc"}, timeout=30),
    ]
    for response in responses:
        assert response.status_code == 401
        assert _error(response)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        server.client(key="olk-wrong").chat.completions.create(model="tiny", messages=MESSAGES)


def test_unknown_model_gets_404(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        server.client().chat.completions.create(model="gpt-4", messages=MESSAGES)
    assert caught.value.body["code"] == "model_not_found"
    mix = {"model": "tiny", "messages": MESSAGES, "adapters": {"alpha": 1.0, "nope": 1.0}}
    assert server.post("/v1/chat/completions", mix).status_code == 404


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"n": 0}, "n"),
    ],
)
def test_unsupported_or_invalid_fields_get_400_naming_them(
    server: Server, extra: dict[str, Any], param: str
) -> None:
    response = server.post("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, **extra})
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == param
    assert param in error["message"]
    assert error["type"] == "invalid_request_error"


def test_a_prompt_too_long_gets_400_context_length(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().completions.create(model="tiny", prompt="x" * 600, max_tokens=4)
    assert caught.value.body["code"] == "context_length_exceeded"


def test_receipts_are_only_for_their_payer(server: Server) -> None:
    from openledger.gateway import ReceiptLedger

    reply = server.client().completions.create(model="tiny", prompt="a", max_tokens=2)
    receipt_id = reply.usage.model_dump()["receipt_id"]
    with ReceiptLedger(server.ledger) as ledger:
        other, _ = ledger.create_key(name="someone else")
    assert server.get(f"/v1/receipts/{receipt_id}", key=other).status_code == 404
    assert server.get(f"/v1/receipts/{receipt_id}", key="olk-bad").status_code == 401
    assert server.get("/v1/receipts/0x" + "00" * 32).status_code == 404
    assert server.get(f"/v1/receipts/{reply.id}").status_code == 200


def test_langchain_chat_model(server: Server, reference: Any) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(
        model="alpha",
        base_url=server.base_url + "/v1",
        api_key=server.key,
        temperature=0,
        max_tokens=8,
        max_retries=0,
    )
    message = chat.invoke("Tell me about ledgers.")
    expected = greedy(
        reference, [{"role": "user", "content": "Tell me about ledgers."}], 8, "alpha"
    )
    assert message.content == expected.text
    assert (
        "".join(str(piece.content) for piece in chat.stream("Tell me about ledgers."))
        == expected.text
    )


def test_metrics_parse_and_move(server: Server) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def sample(name: str, **labels: str) -> float:
        text = server.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0

    ok = {"endpoint": "/v1/completions", "status": "200"}
    before = {
        "requests": sample("openledger_requests_total", **ok),
        "tokens": sample("openledger_completion_tokens_total", adapter="beta"),
        "receipts": sample("openledger_receipts_written_total"),
        "ttft": sample("openledger_time_to_first_token_seconds_count"),
        "unsettled": sample("openledger_receipts_unsettled"),
        "awaiting": sample("openledger_receipts_awaiting_attribution"),
    }
    server.client().completions.create(model="beta", prompt="a", max_tokens=3, temperature=0)
    assert sample("openledger_requests_total", **ok) == before["requests"] + 1
    assert sample("openledger_completion_tokens_total", adapter="beta") == before["tokens"] + 3
    assert sample("openledger_receipts_written_total") == before["receipts"] + 1
    assert sample("openledger_time_to_first_token_seconds_count") == before["ttft"] + 1
    assert sample("openledger_receipts_unsettled") == before["unsettled"] + 1
    assert sample("openledger_receipts_awaiting_attribution") == before["awaiting"] + 1
    assert sample("openledger_inter_token_latency_seconds_count") >= 2
    assert sample("openledger_requests_running") == 0
