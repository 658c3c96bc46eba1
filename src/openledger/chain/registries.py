"""Typed clients of ``DatanetRegistry`` and ``ModelRegistry``."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from openledger.chain.bindings import ContractClient, Receipt, plain
from openledger.chain.encoding import (
    ModelManifest,
    datanet_id,
    manifest_hash,
    model_id,
    record_leaf,
)
from openledger.crypto import Account, eip712_domain, from_hex, to_checksum_address, typed_data
from openledger.types import Address, Hash32, to_hash32

__all__ = [
    "DatanetInfo",
    "DatanetRegistryClient",
    "ModelInfo",
    "ModelRegistryClient",
    "ModelStatus",
    "SnapshotInfo",
]

_ZERO = to_hash32(bytes(32))
_PUBLISH_TYPES = {
    "PublishSnapshot": [
        ("datanetId", "bytes32"),
        ("root", "bytes32"),
        ("recordCount", "uint48"),
        ("nonce", "uint256"),
        ("deadline", "uint256"),
    ]
}


@dataclass(frozen=True, slots=True)
class DatanetInfo:
    """A registered datanet as stored on chain."""

    owner: Address
    registered_at: int
    schema_hash: Hash32
    metadata_hash: Hash32
    name: str
    metadata_uri: str


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One published snapshot of a datanet."""

    root: Hash32
    publisher: Address
    record_count: int
    published_at: int


class ModelStatus(enum.IntEnum):
    """``ModelRegistry.Status``."""

    NONE = 0
    ACTIVE = 1
    DEPRECATED = 2


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A registered model as stored on chain.

    Attributes:
        owner: Its current owner.
        status: Active or deprecated.
        registered_at: Block timestamp of the registration.
        registrant: Who registered it (part of its id; kept across ownership transfers).
        price_per_1k_tokens: Price in wei per 1,000 tokens.
        manifest: What it was made of.
    """

    owner: Address
    status: ModelStatus
    registered_at: int
    registrant: Address
    price_per_1k_tokens: int
    manifest: ModelManifest


def _proof_bytes(proof: Sequence[bytes | str]) -> list[bytes]:
    return [from_hex(p, size=32, what="proof element") for p in proof]


class DatanetRegistryClient(ContractClient):
    """``DatanetRegistry``: datanets, curators and append-only snapshot roots."""

    contract_name = "DatanetRegistry"

    @staticmethod
    def datanet_id_of(owner: str, name: str) -> Hash32:
        """Return the id ``owner`` gets for ``name`` (computed off chain, same as on chain)."""
        return datanet_id(owner, name)

    @staticmethod
    def record_leaf(record_hash: bytes | str, contributor: str) -> Hash32:
        """Return the snapshot leaf of a record (computed off chain, same as on chain)."""
        return record_leaf(record_hash, contributor)

    def register_datanet(
        self,
        name: str,
        schema_hash: bytes | str = _ZERO,
        metadata_hash: bytes | str = _ZERO,
        metadata_uri: str = "",
        *,
        sender: Account | None = None,
    ) -> Receipt:
        """Register a datanet owned by the sender; its id is in the ``DatanetRegistered`` event."""
        schema, meta = from_hex(schema_hash, size=32), from_hex(metadata_hash, size=32)
        return self._transact("registerDatanet", name, schema, meta, metadata_uri, sender=sender)

    def update_metadata(
        self,
        datanet: str,
        metadata_hash: bytes | str,
        metadata_uri: str,
        *,
        sender: Account | None = None,
    ) -> Receipt:
        """Replace the datanet's metadata hash and URI (owner only)."""
        meta = from_hex(metadata_hash, size=32)
        return self._transact("updateMetadata", _id(datanet), meta, metadata_uri, sender=sender)

    def set_curator(
        self, datanet: str, curator: str, allowed: bool = True, *, sender: Account | None = None
    ) -> Receipt:
        """Allow or disallow ``curator`` to publish snapshots (owner only)."""
        who = to_checksum_address(curator)
        return self._transact("setCurator", _id(datanet), who, allowed, sender=sender)

    def transfer_datanet_ownership(
        self, datanet: str, new_owner: str, *, sender: Account | None = None
    ) -> Receipt:
        """Offer the datanet to ``new_owner``, who must accept it (owner only).

        The zero address withdraws a pending offer. Nothing changes until
        :meth:`accept_datanet_ownership`.
        """
        who = to_checksum_address(new_owner)
        return self._transact("transferDatanetOwnership", _id(datanet), who, sender=sender)

    def accept_datanet_ownership(self, datanet: str, *, sender: Account | None = None) -> Receipt:
        """Take over a datanet offered to the sender; every curator is cleared."""
        return self._transact("acceptDatanetOwnership", _id(datanet), sender=sender)

    def pending_owner(self, datanet: str) -> Address | None:
        """Return the address the datanet is offered to, or ``None``."""
        return _address_or_none(self._call("pendingOwner", _id(datanet)))

    def publish_snapshot(
        self, datanet: str, root: bytes | str, record_count: int, *, sender: Account | None = None
    ) -> Receipt:
        """Append a snapshot root (owner or curator); the index is in ``SnapshotPublished``."""
        args = (_id(datanet), from_hex(root, size=32, what="root"), record_count)
        return self._transact("publishSnapshot", *args, sender=sender)

    def sign_publish_snapshot(
        self, signer: Account, datanet: str, root: bytes | str, record_count: int, deadline: int
    ) -> bytes:
        """Sign an EIP-712 ``PublishSnapshot`` for :meth:`publish_snapshot_by_sig`.

        Uses the signer's current on-chain nonce, so sign right before relaying.
        """
        domain = eip712_domain(
            "OpenLedger DatanetRegistry",
            "1",
            chain_id=self.chain.chain_id,
            verifying_contract=self.address,
        )
        message = {
            "datanetId": _id(datanet),
            "root": from_hex(root, size=32, what="root"),
            "recordCount": record_count,
            "nonce": self.nonces(signer.address),
            "deadline": deadline,
        }
        return signer.sign_typed_data(
            typed_data(domain, _PUBLISH_TYPES, "PublishSnapshot", message)
        )

    def publish_snapshot_by_sig(
        self,
        datanet: str,
        root: bytes | str,
        record_count: int,
        signer: str,
        deadline: int,
        signature: bytes | str,
        *,
        sender: Account | None = None,
    ) -> Receipt:
        """Relay a snapshot publication signed by the owner or a curator (sender pays gas)."""
        args = (
            _id(datanet),
            from_hex(root, size=32, what="root"),
            record_count,
            to_checksum_address(signer),
            deadline,
            from_hex(signature, size=65, what="signature"),
        )
        return self._transact("publishSnapshotBySig", *args, sender=sender)

    def contains_record(
        self,
        datanet: str,
        index: int,
        record_hash: bytes | str,
        contributor: str,
        proof: Sequence[bytes | str],
    ) -> bool:
        """Return whether the record is a leaf of snapshot ``index`` (checked on chain)."""
        record = from_hex(record_hash, size=32, what="record_hash")
        args = (_id(datanet), index, record, to_checksum_address(contributor), _proof_bytes(proof))
        return bool(self._call("containsRecord", *args))

    def get_datanet(self, datanet: str) -> DatanetInfo:
        """Return a datanet; raises ``ContractRevertError`` (``UnknownDatanet``) if absent."""
        owner, at, schema, meta, name, uri = self._call("getDatanet", _id(datanet))
        return DatanetInfo(to_checksum_address(owner), at, plain(schema), plain(meta), name, uri)

    def get_snapshot(self, datanet: str, index: int) -> SnapshotInfo:
        """Return snapshot ``index``; raises ``ContractRevertError`` (``UnknownSnapshot``)."""
        root, publisher, count, at = self._call("getSnapshot", _id(datanet), index)
        return SnapshotInfo(plain(root), to_checksum_address(publisher), count, at)

    def published_roots(self, from_block: int = 0) -> set[Hash32]:
        """Return every snapshot root published since ``from_block`` (any datanet).

        Reads ``SnapshotPublished`` logs; on a long-lived network pass the deployment block.
        """
        logs = self._logs("SnapshotPublished", from_block)
        return {Hash32(str(args["root"]).lower()) for args in logs}

    def datanets_of_roots(self, roots: Iterable[str], from_block: int = 0) -> dict[Hash32, Hash32]:
        """Return the datanet each of ``roots`` was published under (roots never published
        are left out), from ``SnapshotPublished`` logs since ``from_block``."""
        wanted = {str(r).lower() for r in roots}
        found: dict[Hash32, Hash32] = {}
        for args in self._logs("SnapshotPublished", from_block) if wanted else []:
            root = Hash32(str(args["root"]).lower())
            if root in wanted:
                found.setdefault(root, Hash32(str(args["datanetId"]).lower()))
        return found

    def snapshot_count(self, datanet: str) -> int:
        """Return how many snapshots the datanet has published."""
        return int(self._call("snapshotCount", _id(datanet)))

    def is_publisher(self, datanet: str, account: str) -> bool:
        """Return whether ``account`` may publish the datanet's snapshots."""
        return bool(self._call("isPublisher", _id(datanet), to_checksum_address(account)))

    def nonces(self, account: str) -> int:
        """Return ``account``'s next EIP-712 nonce."""
        return int(self._call("nonces", to_checksum_address(account)))


class ModelRegistryClient(ContractClient):
    """``ModelRegistry``: models named by registrant and manifest, with owner, price, status."""

    contract_name = "ModelRegistry"

    def model_id_of(self, manifest: ModelManifest, registrant: str) -> Hash32:
        """Return the id ``registrant`` gets for ``manifest``, as the contract computes it.

        :func:`openledger.chain.model_id` computes the same off chain.
        """
        who = to_checksum_address(registrant)
        return to_hash32(self._call("modelIdOf", who, manifest.as_abi_tuple()))

    def manifest_hash_of(self, manifest: ModelManifest) -> Hash32:
        """Return the manifest hash as the contract computes it (an ``eth_call``)."""
        return to_hash32(self._call("manifestHashOf", manifest.as_abi_tuple()))

    def register_model(
        self,
        manifest: ModelManifest,
        price_per_1k_tokens: int = 0,
        *,
        sender: Account | None = None,
    ) -> Receipt:
        """Register a model owned by the sender; its id is ``model_id(manifest, sender)``.

        The id is also in the receipt's ``ModelRegistered`` event (``modelId``).
        """
        return self._transact(
            "registerModel", manifest.as_abi_tuple(), price_per_1k_tokens, sender=sender
        )

    def set_price(
        self, model: str, price_per_1k_tokens: int, *, sender: Account | None = None
    ) -> Receipt:
        """Change the price per 1,000 tokens (owner only)."""
        return self._transact("setPrice", _id(model), price_per_1k_tokens, sender=sender)

    def set_status(
        self, model: str, status: ModelStatus, *, sender: Account | None = None
    ) -> Receipt:
        """Mark the model active or deprecated (owner only)."""
        return self._transact("setStatus", _id(model), int(status), sender=sender)

    def transfer_model_ownership(
        self, model: str, new_owner: str, *, sender: Account | None = None
    ) -> Receipt:
        """Offer the model to ``new_owner``, who must accept it (owner only).

        The zero address withdraws a pending offer; the model id never changes.
        """
        who = to_checksum_address(new_owner)
        return self._transact("transferModelOwnership", _id(model), who, sender=sender)

    def accept_model_ownership(self, model: str, *, sender: Account | None = None) -> Receipt:
        """Take over a model offered to the sender."""
        return self._transact("acceptModelOwnership", _id(model), sender=sender)

    def pending_owner(self, model: str) -> Address | None:
        """Return the address the model is offered to, or ``None``."""
        return _address_or_none(self._call("pendingOwner", _id(model)))

    def get_model(self, model: str) -> ModelInfo:
        """Return a model; raises ``ContractRevertError`` (``UnknownModel``) if absent."""
        owner, status, at, registrant, price, manifest_values = self._call("getModel", _id(model))
        weights, base, recipe, roots, log = manifest_values
        manifest = ModelManifest(
            adapter_weights_hash=weights,
            base_model=base,
            recipe_hash=recipe,
            datanet_roots=roots,
            training_log_root=log,
        )
        return ModelInfo(
            owner=to_checksum_address(owner),
            status=ModelStatus(status),
            registered_at=at,
            registrant=to_checksum_address(registrant),
            price_per_1k_tokens=price,
            manifest=manifest,
        )

    def is_registered(self, model: str) -> bool:
        """Return whether a model with this id is registered."""
        return bool(self._call("isRegistered", _id(model)))

    @staticmethod
    def model_id(manifest: ModelManifest, registrant: str) -> Hash32:
        """Return the id ``registrant`` gets for ``manifest``, computed off chain."""
        return model_id(manifest, registrant)

    @staticmethod
    def manifest_hash(manifest: ModelManifest) -> Hash32:
        """Return the hash of ``manifest``, computed off chain."""
        return manifest_hash(manifest)


_ZERO_ADDRESS = "0x" + "00" * 20


def _id(value: bytes | str) -> bytes:
    return from_hex(value, size=32, what="id")


def _address_or_none(value: str) -> Address | None:
    address = to_checksum_address(value)
    return None if address == to_checksum_address(_ZERO_ADDRESS) else address
