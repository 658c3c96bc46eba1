"""StandardMerkleTree: layout, proofs, properties, and bad input."""

from __future__ import annotations

import pytest
from eth_abi import encode
from hypothesis import given, settings
from hypothesis import strategies as st

from openledger.crypto import (
    MultiProof,
    StandardMerkleTree,
    hash_pair,
    keccak256,
    leaf_hash,
    process_proof,
    verify_multiproof,
    verify_proof,
)
from openledger.exceptions import CryptoError

ENC = ("bytes32", "address")
hashes = st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex())
addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
leaves = st.lists(st.tuples(hashes, addresses), min_size=1, max_size=40)


def naive_root(values: list[tuple[str, str]]) -> bytes:
    """Slow, obvious reference: sorted leaves, array layout written out long-hand."""
    sorted_leaves = sorted(
        keccak256(keccak256(encode(list(ENC), [bytes.fromhex(v[0][2:]), v[1]]))) for v in values
    )
    n = len(sorted_leaves)
    tree: dict[int, bytes] = {2 * n - 2 - i: leaf for i, leaf in enumerate(sorted_leaves)}
    for k in range(n - 2, -1, -1):
        a, b = tree[2 * k + 1], tree[2 * k + 2]
        tree[k] = keccak256(min(a, b) + max(a, b))
    return tree[0]


@settings(max_examples=60, deadline=None)
@given(leaves)
def test_root_matches_naive_reference(values: list[tuple[str, str]]) -> None:
    tree = StandardMerkleTree.of(values, ENC)
    assert tree.root == "0x" + naive_root(values).hex()


@settings(max_examples=60, deadline=None)
@given(leaves, st.data())
def test_every_proof_verifies_and_altered_ones_do_not(
    values: list[tuple[str, str]], data: st.DataObject
) -> None:
    tree = StandardMerkleTree.of(values, ENC)
    for i, value in enumerate(values):
        proof = tree.proof(i)
        assert tree.verify(i, proof)
        assert verify_proof(tree.root, leaf_hash(value, ENC), proof)
    i = data.draw(st.integers(0, len(values) - 1))
    proof = tree.proof(i)
    flipped = bytes([keccak256(b"x")[0]]) + bytes(31)
    assert not verify_proof(tree.root, flipped, proof)
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof]
        bad[j] = (
            "0x"
            + bytes(a ^ 1 if k == 0 else a for k, a in enumerate(bytes.fromhex(proof[j][2:]))).hex()
        )
        assert not verify_proof(tree.root, leaf_hash(values[i], ENC), bad)


@settings(max_examples=40, deadline=None)
@given(leaves, st.randoms(use_true_random=False))
def test_root_does_not_depend_on_value_order(values: list[tuple[str, str]], rnd) -> None:  # type: ignore[no-untyped-def]
    shuffled = list(values)
    rnd.shuffle(shuffled)
    assert StandardMerkleTree.of(values, ENC).root == StandardMerkleTree.of(shuffled, ENC).root


def test_single_leaf_tree_is_its_leaf_with_empty_proof() -> None:
    value = ("0x" + "ab" * 32, "0x" + "cd" * 20)
    tree = StandardMerkleTree.of([value], ENC)
    assert tree.root == tree.leaf_hash(0)
    assert tree.proof(0) == []


def test_proof_by_value_equals_proof_by_index() -> None:
    values = [("0x" + f"{i:064x}", "0x" + f"{i:040x}") for i in range(7)]
    tree = StandardMerkleTree.of(values, ENC)
    assert tree.proof(values[3]) == tree.proof(3)
    assert tree.index_of(values[5]) == 5


def test_generic_types_use_abi_encoding() -> None:
    values = [["hello", 3, True], ["world", 2**200, False]]
    enc = ["string", "uint256", "bool"]
    tree = StandardMerkleTree.of(values, enc)
    expected = keccak256(keccak256(encode(enc, values[0])))
    assert tree.leaf_hash(0) == "0x" + expected.hex()
    assert tree.verify(1, tree.proof(1))


def test_hand_encoding_equals_eth_abi_for_static_types() -> None:
    enc = ["address", "uint8", "int16", "bytes4", "bool", "uint256"]
    value = ["0x" + "12" * 20, 255, -5, "0xdeadbeef", True, 7]
    native = [*value[:3], bytes.fromhex("deadbeef"), *value[4:]]
    assert leaf_hash(value, enc) == keccak256(keccak256(encode(enc, native)))


def test_hash_pair_is_symmetric() -> None:
    a, b = keccak256(b"a"), keccak256(b"b")
    assert hash_pair(a, b) == hash_pair(b, a)


@pytest.mark.parametrize(
    ("values", "enc", "message"),
    [
        ([], ENC, "at least one leaf"),
        ([("0x" + "00" * 31, "0x" + "00" * 20)], ENC, "bytes32 value must be 32 bytes"),
        ([("0x" + "00" * 32,)], ENC, r"values\[0\] has 1 items"),
        ([(-1,)], ["uint256"], "uint256 value must be an int"),
        ([(2**8,)], ["uint8"], "uint8 value must be an int"),
        ([("x",)], ["bool"], "bool value must be True or False"),
        ([(1,)], ["string"], "cannot abi-encode"),
    ],
)
def test_bad_leaves_raise_crypto_error(values: list, enc: list[str], message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(CryptoError, match=message):
        StandardMerkleTree.of(values, enc)


def test_out_of_range_index_and_unknown_value() -> None:
    tree = StandardMerkleTree.of([("0x" + "11" * 32, "0x" + "22" * 20)], ENC)
    with pytest.raises(CryptoError, match="out of range"):
        tree.proof(1)
    with pytest.raises(CryptoError, match="not a leaf"):
        tree.proof(("0x" + "33" * 32, "0x" + "22" * 20))


def test_verify_proof_returns_false_on_malformed_input() -> None:
    assert not verify_proof("0x1234", bytes(32), [])
    assert not verify_proof(bytes(32), bytes(32), ["nothex"])
    with pytest.raises(CryptoError, match="proof\\[0\\]"):
        process_proof(bytes(32), [b"short"])


@settings(max_examples=60, deadline=None)
@given(leaves, st.data())
def test_multiproofs_verify_and_altered_ones_do_not(
    values: list[tuple[str, str]], data: st.DataObject
) -> None:
    unique = list(dict.fromkeys(values))
    tree = StandardMerkleTree.of(unique, ENC)
    chosen = data.draw(st.lists(st.integers(0, len(unique) - 1), unique=True))
    multi = tree.multiproof(chosen)
    assert verify_multiproof(tree.root, multi)
    assert sorted(multi.values) == sorted(unique[i] for i in chosen)
    if multi.leaves:
        bad = MultiProof(
            ("0x" + keccak256(b"x").hex(), *multi.leaves[1:]), multi.proof, multi.proof_flags
        )
        assert not verify_multiproof(tree.root, bad)
    if multi.proof_flags:
        flipped = (not multi.proof_flags[0], *multi.proof_flags[1:])
        assert not verify_multiproof(tree.root, MultiProof(multi.leaves, multi.proof, flipped))


def test_multiproof_refuses_repeats() -> None:
    tree = StandardMerkleTree.of([("0x" + "11" * 32, "0x" + "22" * 20)] * 1, ENC)
    with pytest.raises(CryptoError, match="same leaf twice"):
        tree.multiproof([0, 0])
