"""Hashing, OpenZeppelin-compatible Merkle trees, accounts and EIP-712 signing.

A small torch-free layer shared by :mod:`openledger.data` and :mod:`openledger.chain`.
"""

from __future__ import annotations

from openledger.crypto.accounts import (
    Account,
    TypedData,
    eip712_domain,
    recover_typed_data,
    typed_data,
    typed_data_digest,
)
from openledger.crypto.hashing import (
    ZERO_HASH,
    from_hex,
    keccak256,
    keccak256_hex,
    to_checksum_address,
    to_hex,
)
from openledger.crypto.merkle import (
    MultiProof,
    StandardMerkleTree,
    hash_pair,
    leaf_hash,
    process_multiproof,
    process_proof,
    root_of_leaves,
    verify_multiproof,
    verify_proof,
)

__all__ = [
    "ZERO_HASH",
    "Account",
    "MultiProof",
    "StandardMerkleTree",
    "TypedData",
    "eip712_domain",
    "from_hex",
    "hash_pair",
    "keccak256",
    "keccak256_hex",
    "leaf_hash",
    "process_multiproof",
    "process_proof",
    "recover_typed_data",
    "root_of_leaves",
    "to_checksum_address",
    "to_hex",
    "typed_data",
    "typed_data_digest",
    "verify_multiproof",
    "verify_proof",
]
