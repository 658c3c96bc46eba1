"""The canonical on-chain encodings, computed off chain exactly as the contracts do.

    datanet id   = keccak256(abi.encode(address owner, keccak256(bytes(name))))
    record leaf  = keccak256(keccak256(abi.encode(bytes32 recordHash, address contributor)))
    reward leaf  = keccak256(keccak256(abi.encode(address account, uint256 amount)))
    manifest hash = keccak256(abi.encode(MANIFEST_TAG, bytes32 adapterWeightsHash,
                                         string baseModel, bytes32 recipeHash,
                                         bytes32[] datanetRoots, bytes32 trainingLogRoot))
    model id     = keccak256(abi.encode(address registrant, bytes32 manifestHash))
    MANIFEST_TAG = keccak256("openledger.ModelManifest.v1")

A model id binds the manifest to the address that registered it, so a copied pending
registration, or a public manifest registered by someone else, gets another id.

Both leaf kinds are OpenZeppelin StandardMerkleTree leaves, so trees come from
:class:`openledger.crypto.StandardMerkleTree` and proofs verify with ``MerkleProof``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from eth_abi.abi import encode as abi_encode
from pydantic import BaseModel, ConfigDict, Field, field_validator

from openledger.crypto import StandardMerkleTree, keccak256, leaf_hash, to_checksum_address
from openledger.exceptions import ConfigError
from openledger.types import Address, Hash32, Wei, to_hash32, to_wei

__all__ = [
    "MANIFEST_TAG",
    "RECORD_LEAF_ENCODING",
    "REWARD_LEAF_ENCODING",
    "ModelManifest",
    "RewardTree",
    "datanet_id",
    "manifest_hash",
    "model_id",
    "record_leaf",
    "reward_leaf",
]

RECORD_LEAF_ENCODING = ("bytes32", "address")
"""ABI types of a datanet snapshot leaf: ``(recordHash, contributor)``."""

REWARD_LEAF_ENCODING = ("address", "uint256")
"""ABI types of a reward epoch leaf: ``(account, amount)``."""

MANIFEST_TAG = keccak256(b"openledger.ModelManifest.v1")
"""Domain tag hashed in front of every model manifest."""

_Hash32Field = Annotated[str, Field(description="32 bytes as 0x + 64 hex digits")]


def datanet_id(owner: str, name: str) -> Hash32:
    """Return the id ``DatanetRegistry`` gives the datanet ``name`` registered by ``owner``."""
    name_hash = keccak256(name.encode("utf-8"))
    return to_hash32(keccak256(abi_encode(["address", "bytes32"], [owner, name_hash])))


def record_leaf(record_hash: bytes | str, contributor: str) -> Hash32:
    """Return the snapshot Merkle leaf of one record (as ``DatanetRegistry.recordLeaf``)."""
    value = (to_hash32(record_hash, what="record_hash"), to_checksum_address(contributor))
    return to_hash32(leaf_hash(value, RECORD_LEAF_ENCODING))


def reward_leaf(account: str, amount: int) -> Hash32:
    """Return the reward Merkle leaf of one payout (as ``AttributionRewards.rewardLeaf``)."""
    value = (to_checksum_address(account), to_wei(amount))
    return to_hash32(leaf_hash(value, REWARD_LEAF_ENCODING))


class ModelManifest(BaseModel):
    """What a model or adapter was made of; with its registrant it names the on-chain model.

    Attributes:
        adapter_weights_hash: Hash of the adapter weights file(s).
        base_model: The base model id, e.g. ``"smollm2-135m-instruct"``.
        recipe_hash: Hash of the training recipe.
        datanet_roots: Snapshot roots of the datanets trained on, in training order.
        training_log_root: Merkle root (or hash) of the training log.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    adapter_weights_hash: _Hash32Field
    base_model: str = Field(min_length=1, description="base model id, non-empty")
    recipe_hash: _Hash32Field
    datanet_roots: tuple[_Hash32Field, ...] = ()
    training_log_root: _Hash32Field

    @field_validator("adapter_weights_hash", "recipe_hash", "training_log_root", mode="before")
    @classmethod
    def _hash(cls, value: Any) -> str:
        return to_hash32(value)

    @field_validator("datanet_roots", mode="before")
    @classmethod
    def _roots(cls, value: Any) -> tuple[str, ...]:
        return tuple(to_hash32(v, what="datanet_roots[]") for v in value)

    def as_abi_tuple(self) -> tuple[bytes, str, bytes, list[bytes], bytes]:
        """Return the manifest as the ``ModelRegistry.Manifest`` struct's values."""
        return (
            bytes.fromhex(self.adapter_weights_hash[2:]),
            self.base_model,
            bytes.fromhex(self.recipe_hash[2:]),
            [bytes.fromhex(r[2:]) for r in self.datanet_roots],
            bytes.fromhex(self.training_log_root[2:]),
        )


def manifest_hash(manifest: ModelManifest) -> Hash32:
    """Return the hash ``ModelRegistry.manifestHashOf`` derives from ``manifest``."""
    types = ["bytes32", "bytes32", "string", "bytes32", "bytes32[]", "bytes32"]
    return to_hash32(keccak256(abi_encode(types, [MANIFEST_TAG, *manifest.as_abi_tuple()])))


def model_id(manifest: ModelManifest, registrant: str) -> Hash32:
    """Return the id ``ModelRegistry`` gives ``manifest`` when ``registrant`` registers it.

    Args:
        manifest: The model's manifest.
        registrant: The address that sends (or sent) ``registerModel``.

    Returns:
        ``keccak256(abi.encode(registrant, manifest_hash(manifest)))`` as ``0x``-hex.
    """
    values = [to_checksum_address(registrant), bytes.fromhex(manifest_hash(manifest)[2:])]
    return to_hash32(keccak256(abi_encode(["address", "bytes32"], values)))


class RewardTree:
    """The Merkle tree of one reward epoch: leaves ``(account, amount)``.

    Example:
        >>> tree = RewardTree({"0x" + "11" * 20: 5, "0x" + "22" * 20: 7})
        >>> tree.total
        12
    """

    __slots__ = ("_amounts", "_tree")

    def __init__(self, payouts: Mapping[str, int]) -> None:
        """Build the tree.

        Args:
            payouts: Amount in wei per account; at least one, each > 0.

        Raises:
            ConfigError: If empty, an amount is not a positive int, or an address repeats
                (in any letter case).
        """
        if not payouts:
            raise ConfigError("a reward epoch needs at least one payout")
        amounts: dict[Address, Wei] = {}
        for account, amount in payouts.items():
            address = to_checksum_address(account)
            if address in amounts:
                raise ConfigError(f"account {address} appears twice in the payouts")
            if to_wei(amount, what=f"payout of {address}") == 0:
                raise ConfigError(f"payout of {address} is 0; leave the account out instead")
            amounts[address] = Wei(amount)
        self._amounts = amounts
        self._tree = StandardMerkleTree.of(list(amounts.items()), REWARD_LEAF_ENCODING)

    @property
    def root(self) -> Hash32:
        """The epoch's Merkle root."""
        return self._tree.root

    @property
    def total(self) -> Wei:
        """The sum of all payouts (what posting the epoch must fund)."""
        return Wei(sum(self._amounts.values()))

    @property
    def payouts(self) -> dict[Address, Wei]:
        """A copy of the payouts by checksummed address."""
        return dict(self._amounts)

    def __len__(self) -> int:
        return len(self._amounts)

    def amount_of(self, account: str) -> Wei:
        """Return the payout of ``account``.

        Raises:
            ConfigError: If the account has no payout in this epoch.
        """
        address = to_checksum_address(account)
        if address not in self._amounts:
            raise ConfigError(f"account {address} has no payout in this epoch")
        return self._amounts[address]

    def proof(self, account: str) -> list[Hash32]:
        """Return the Merkle proof of ``account``'s leaf."""
        address = to_checksum_address(account)
        return self._tree.proof((address, self.amount_of(address)))
