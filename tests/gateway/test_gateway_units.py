"""The gateway's pieces without a server: public names, settings, bodies, receipts, ledger."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import openledger.gateway
from openledger.crypto import Account
from openledger.exceptions import ConfigError, LedgerError, ReceiptError, RequestFieldError
from openledger.gateway import (
    GatewayConfig,
    GatewayReceipt,
    ReceiptLedger,
    SignedGatewayReceipt,
    canonical_hash,
    hash_api_key,
    load_operator_key,
    parse_adapter_args,
    receipt_domain,
)
from openledger.gateway.schemas import ChatCompletionRequest, CompletionRequest, parse_request

PUBLIC = [
    "GATEWAY_RECEIPT_TYPES",
    "ApiKey",
    "AttributionPass",
    "AttributionWorker",
    "Claim",
    "GatewayConfig",
    "GatewayLimits",
    "GatewayReceipt",
    "ReceiptLedger",
    "Settlement",
    "SignedGatewayReceipt",
    "canonical_hash",
    "claims_of",
    "create_app",
    "hash_api_key",
    "ledger_settings",
    "load_operator_key",
    "parse_adapter_args",
    "receipt_domain",
    "recover_epochs",
    "run_server",
    "settle_ledger",
]


def test_public_api_is_pinned() -> None:
    assert sorted(openledger.gateway.__all__) == sorted(PUBLIC)
    assert all(hasattr(openledger.gateway, name) for name in PUBLIC)


def test_config_reads_yaml_and_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "model: ./base\nadapters: {a: ./a}\nport: 9000\n"
        "limits: {max_n: 4}\nengine: {max_num_seqs: 8}\n"
    )
    config = GatewayConfig.from_yaml(path, port=9001, adapters={"b": "./b"}, host=None)
    assert (config.model, config.port, config.host) == ("./base", 9001, "127.0.0.1")
    assert config.adapters == {"a": "./a", "b": "./b"}
    assert config.limits.max_n == 4
    assert config.engine.max_num_seqs == 8
    assert config.key_file == Path("openledger-gateway.db.operator-key")


@pytest.mark.parametrize(
    ("text", "field"),
    [("port: 70000\n", "port"), ("engine: {block_size: 3}\n", "block_size"), ("nope: 1\n", "nope")],
)
def test_config_errors_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=field):
        GatewayConfig.from_yaml(path)


def test_adapter_arguments() -> None:
    assert parse_adapter_args(["a=./x", "b=hf://o/r"]) == {"a": "./x", "b": "hf://o/r"}
    with pytest.raises(ConfigError, match="NAME=SOURCE"):
        parse_adapter_args(["noequals"])
    with pytest.raises(ConfigError, match="twice"):
        parse_adapter_args(["a=1", "a=2"])
    with pytest.raises(ConfigError, match="--index takes ADAPTER=INDEX, got 'x'"):
        parse_adapter_args(["x"], flag="--index", shape="ADAPTER=INDEX")


def test_unsupported_fields_are_named_and_neutral_ones_accepted() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(RequestFieldError, match="tools") as caught:
        parse_request({**body, "tools": [{"type": "function"}]}, ChatCompletionRequest)
    assert caught.value.param == "tools"
    neutral = {**body, "frequency_penalty": 0, "logit_bias": {}, "tools": None}
    assert parse_request(neutral, ChatCompletionRequest).model == "m"
    with pytest.raises(RequestFieldError) as caught:
        parse_request({**body, "presence_penalty": 0.5}, ChatCompletionRequest)
    assert caught.value.param == "presence_penalty"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"n": 0}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"stream_options": {"include_usage": True, "x": 1}}, "stream_options.x"),
        ({"adapters": {"a": -1.0}}, "adapters"),
    ],
)
def test_invalid_values_name_their_path(change: dict[str, object], param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **change}
    with pytest.raises(RequestFieldError) as caught:
        parse_request(body, ChatCompletionRequest)
    assert caught.value.param == param


def test_completion_prompts_in_every_shape() -> None:
    def prompts(prompt: object) -> object:
        return parse_request({"model": "m", "prompt": prompt}, CompletionRequest).prompts

    assert prompts("a") == ["a"]
    assert prompts(["a", "b"]) == ["a", "b"]
    assert prompts([1, 2]) == [[1, 2]]
    assert prompts([[1], [2, 3]]) == [[1], [2, 3]]


def _receipt(**change: object) -> GatewayReceipt:
    fields: dict[str, object] = {
        "request_id": "0x" + "11" * 32,
        "payer": "0x" + "22" * 20,
        "adapter_names": ("a",),
        "adapter_ids": ("0x" + "33" * 32,),
        "adapter_weights": (10**9,),
        "prompt_tokens": 5,
        "completion_tokens": 7,
        "prompt_hash": canonical_hash({"prompt": "x"}),
        "answer_hash": canonical_hash(["y"]),
        "timestamp": 1_700_000_000,
        "epoch": 1_700_000_000 // 86_400,
    }
    fields.update(change)
    return GatewayReceipt(**fields)


def test_receipts_verify_only_under_their_signer_and_domain() -> None:
    operator, stranger = Account.create(), Account.create()
    domain = receipt_domain(1)
    signed = _receipt().sign(operator, domain)
    signed.verify(operator.address, domain)
    with pytest.raises(ReceiptError, match="signed by"):
        signed.verify(stranger.address, domain)
    with pytest.raises(ReceiptError, match="signed by"):
        signed.verify(operator.address, receipt_domain(2))
    tampered = SignedGatewayReceipt(
        receipt=_receipt(completion_tokens=8), signature=signed.signature
    )
    with pytest.raises(ReceiptError):
        tampered.verify(operator.address, domain)
    assert SignedGatewayReceipt.model_validate_json(signed.to_json()) == signed


def test_receipt_fields_are_checked() -> None:
    with pytest.raises(ReceiptError, match="one id and one weight"):
        _receipt(adapter_weights=())
    with pytest.raises(ReceiptError):
        _receipt(prompt_tokens=-1)


def test_ledger_records_once_across_restarts_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.db"
    signed = _receipt().sign(Account.create(), receipt_domain(1))
    with ReceiptLedger(path) as ledger:
        ledger.record(signed)
        with pytest.raises(LedgerError, match="recorded already"):
            ledger.record(signed)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with ReceiptLedger(path) as ledger:
        with pytest.raises(LedgerError, match="recorded already"):
            ledger.record(signed)
        assert ledger.count_receipts() == 1
        assert ledger.receipt(signed.receipt.request_id) == signed
        assert list(ledger.receipts(epoch=signed.receipt.epoch)) == [signed]
        assert list(ledger.receipts(epoch=0)) == []


def test_keys_are_stored_hashed_and_can_be_revoked(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    payer = Account.create().address
    with ReceiptLedger(path) as ledger:
        key, record = ledger.create_key(payer=payer, name="k")
        assert ledger.find_key(key) == record
        assert record.payer == payer
        assert record.key_hash == hash_api_key(key)
        assert ledger.find_key(key + "x") is None
        other, derived = ledger.create_key()
        assert derived.payer.startswith("0x")
        assert derived.payer != payer
        assert ledger.revoke_key(record.key_id)
        assert ledger.find_key(key) is None
        assert ledger.find_key(other) is not None
    assert key.encode() not in path.read_bytes()
    with pytest.raises(ConfigError, match="payer"):
        ReceiptLedger(path).create_key(payer="0x1234")


def test_operator_key_is_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "op.key"
    first = load_operator_key(path)
    assert load_operator_key(path) == first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="operator key"):
        load_operator_key(path)


def test_a_file_that_is_no_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="not a usable"):
        ReceiptLedger(path)


def test_round_robin_loads_counts_lru_misses_per_replica() -> None:
    from openledger.gateway.ray.routing import round_robin_loads

    assert round_robin_loads(["a", "b", "a", "b"], replicas=2, slots=1) == 2
    assert round_robin_loads(["a", "b", "c", "a"], replicas=1, slots=2) == 4
    assert round_robin_loads(["a", "b", "a", "c", "a"], replicas=1, slots=2) == 3


def test_a_version_2_ledger_gains_saved_adapters_and_keeps_its_keys(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "ledger.db"
    with ReceiptLedger(path) as ledger:
        key, _ = ledger.create_key(name="old")
    with sqlite3.connect(path) as conn:  # the ledger as version 2 wrote it
        conn.execute("DROP TABLE served_adapters")
        conn.execute("PRAGMA user_version=2")
    with ReceiptLedger(path) as ledger:
        assert ledger.find_key(key) is not None
        assert ledger.saved_adapters() == []
        ledger.save_adapter("medqa", "/adapters/medqa", "0x" + "ab" * 32, None)
        latest = ("medqa", "/adapters/medqa2", "0x" + "cd" * 32, "ef" * 32)
        ledger.save_adapter(*latest)
        assert ledger.saved_adapters() == [latest]
        assert ledger.forget_adapter("medqa")
        assert not ledger.forget_adapter("medqa")
        assert ledger.read("PRAGMA user_version") == [(3,)]
