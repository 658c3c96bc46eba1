"""Off-chain encodings: properties of reward trees, manifests and ids (no chain needed)."""

from __future__ import annotations

import pytest
from eth_abi.abi import encode
from hypothesis import given, settings
from hypothesis import strategies as st

from openledger.chain import (
    MANIFEST_TAG,
    ModelManifest,
    RewardTree,
    datanet_id,
    manifest_hash,
    model_id,
)
from openledger.crypto import keccak256, to_checksum_address, verify_proof
from openledger.exceptions import ConfigError

addresses = st.binary(min_size=20, max_size=20).map(to_checksum_address)
hashes = st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex())
payouts = st.dictionaries(addresses, st.integers(1, 2**128), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(payouts)
def test_every_reward_proof_verifies_and_total_is_the_sum(amounts: dict[str, int]) -> None:
    tree = RewardTree(amounts)
    assert tree.total == sum(amounts.values())
    for account, amount in amounts.items():
        leaf = keccak256(keccak256(encode(["address", "uint256"], [account, amount])))
        assert verify_proof(tree.root, leaf, tree.proof(account))
        wrong = keccak256(keccak256(encode(["address", "uint256"], [account, amount + 1])))
        assert not verify_proof(tree.root, wrong, tree.proof(account))


@settings(max_examples=60, deadline=None)
@given(hashes, st.text(min_size=1, max_size=40), hashes, st.lists(hashes, max_size=5), hashes)
def test_model_id_binds_the_registrant_to_the_tagged_manifest_hash(
    weights: str, base: str, recipe: str, roots: list[str], log: str
) -> None:
    manifest = ModelManifest(
        adapter_weights_hash=weights,
        base_model=base,
        recipe_hash=recipe,
        datanet_roots=roots,
        training_log_root=log,
    )
    raw = [bytes.fromhex(h[2:]) for h in (weights, recipe, log)]
    types = ["bytes32", "bytes32", "string", "bytes32", "bytes32[]", "bytes32"]
    values = [MANIFEST_TAG, raw[0], base, raw[1], [bytes.fromhex(r[2:]) for r in roots], raw[2]]
    expected_hash = keccak256(encode(types, values))
    assert manifest_hash(manifest) == "0x" + expected_hash.hex()
    a, b = "0x" + "11" * 20, "0x" + "22" * 20
    ident = keccak256(encode(["address", "bytes32"], [a, expected_hash]))
    assert model_id(manifest, a) == "0x" + ident.hex()
    assert model_id(manifest, b) != model_id(manifest, a)


def test_datanet_id_is_owner_namespaced() -> None:
    a, b = "0x" + "11" * 20, "0x" + "22" * 20
    assert datanet_id(a, "medqa") != datanet_id(b, "medqa")
    expected = keccak256(encode(["address", "bytes32"], [a, keccak256(b"medqa")]))
    assert datanet_id(a, "medqa") == "0x" + expected.hex()


def test_reward_tree_refuses_bad_payouts() -> None:
    a = "0x" + "ab" * 20
    with pytest.raises(ConfigError, match="at least one"):
        RewardTree({})
    with pytest.raises(ConfigError, match="is 0"):
        RewardTree({a: 0})
    with pytest.raises(ConfigError, match="twice"):
        RewardTree({a: 1, a.upper().replace("0X", "0x"): 2})
    with pytest.raises(ConfigError, match="no payout"):
        RewardTree({a: 1}).proof("0x" + "cd" * 20)


def test_manifest_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="adapter_weights_hash"):
        ModelManifest(
            adapter_weights_hash="0x12",
            base_model="m",
            recipe_hash="0x" + "00" * 32,
            training_log_root="0x" + "00" * 32,
        )
