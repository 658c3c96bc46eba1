"""Accounts, EIP-712 signing and recovery, hex and address helpers."""

from __future__ import annotations

import pytest
from eth_account import Account as EthAccount
from eth_account.messages import encode_typed_data

from openledger.crypto import (
    Account,
    eip712_domain,
    from_hex,
    keccak256,
    keccak256_hex,
    recover_typed_data,
    to_checksum_address,
    typed_data,
    typed_data_digest,
)
from openledger.exceptions import CryptoError

KEY = "0x" + "4c" * 32
TYPES = {"Contribution": [("datanet", "bytes32"), ("nonce", "uint256")]}


def payload(nonce: int = 1) -> dict:  # type: ignore[type-arg]
    domain = eip712_domain("OpenLedger Datanet", "1", chain_id=31337)
    return typed_data(domain, TYPES, "Contribution", {"datanet": bytes(32), "nonce": nonce})


def test_keccak_known_vectors() -> None:
    empty = "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keccak256(b"").hex() == empty
    assert keccak256_hex(b"") == "0x" + empty


def test_sign_and_recover_round_trip_and_match_eth_account() -> None:
    alice = Account.from_key(KEY)
    data = payload()
    signature = alice.sign_typed_data(data)
    assert len(signature) == 65
    assert recover_typed_data(data, signature) == alice.address
    expected = EthAccount.sign_message(encode_typed_data(full_message=data), KEY).signature
    assert signature == bytes(expected)


def test_other_message_recovers_another_address() -> None:
    alice = Account.from_key(KEY)
    signature = alice.sign_typed_data(payload(1))
    assert recover_typed_data(payload(2), signature) != alice.address
    assert typed_data_digest(payload(1)) != typed_data_digest(payload(2))


def test_create_gives_distinct_accounts_and_hides_key_in_repr() -> None:
    a, b = Account.create(), Account.create()
    assert a != b
    assert a.key.hex() not in repr(a)
    assert Account.from_key(a.key) == a


@pytest.mark.parametrize(
    ("key", "message"),
    [("0x1234", "must be 32 bytes"), ("0x" + "00" * 32, "not a valid secp256k1 key"), (5, "0x")],
)
def test_bad_keys(key: object, message: str) -> None:
    with pytest.raises(CryptoError, match=message):
        Account.from_key(key)  # type: ignore[arg-type]


def test_bad_signatures() -> None:
    with pytest.raises(CryptoError, match="signature must be 65 bytes"):
        recover_typed_data(payload(), b"\x00" * 64)
    with pytest.raises(CryptoError, match="cannot be recovered"):
        recover_typed_data(payload(), b"\x00" * 65)


def test_checksum_address() -> None:
    lower = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
    good = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    assert to_checksum_address(lower) == good
    assert to_checksum_address(good) == good
    with pytest.raises(CryptoError, match="wrong EIP-55 checksum"):
        to_checksum_address("0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")
    with pytest.raises(CryptoError, match="not valid hex"):
        from_hex("0xzz")


def test_keccak_fallback_backend_gives_the_same_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from openledger.crypto import hashing

    monkeypatch.setitem(sys.modules, "sha3", None)  # as if safe-pysha3 were not installed
    fallback = hashing._pick_backend()
    for data in (b"", b"abc", bytes(range(200))):
        assert fallback(data) == keccak256(data)
