"""The protocol end to end on both backends: registries, EIP-712 relaying, errors."""

from __future__ import annotations

import pytest

from openledger.chain import (
    Account,
    Chain,
    ContractRevertError,
    ModelManifest,
    ModelStatus,
    Protocol,
    datanet_id,
    model_id,
)

H = "0x" + "ab" * 32


def _manifest(weights: str = "0x" + "01" * 32, roots: tuple[str, ...] = (H,)) -> ModelManifest:
    return ModelManifest(
        adapter_weights_hash=weights,
        base_model="smollm2-135m-instruct",
        recipe_hash="0x" + "02" * 32,
        datanet_roots=roots,
        training_log_root="0x" + "03" * 32,
    )


def _register(protocol: Protocol, name: str = "medqa") -> str:
    receipt = protocol.datanets.register_datanet(name, H, H, "ipfs://meta")
    found: str = receipt.event("DatanetRegistered")["datanetId"]
    return found


def test_datanet_id_matches_off_chain_derivation(protocol: Protocol) -> None:
    owner = protocol.chain.default_account.address
    registered = _register(protocol)
    assert registered == datanet_id(owner, "medqa")
    info = protocol.datanets.get_datanet(registered)
    assert (info.owner, info.name, info.metadata_uri, info.schema_hash) == (
        owner,
        "medqa",
        "ipfs://meta",
        H,
    )


def test_duplicate_datanet_is_refused_with_decoded_error(protocol: Protocol) -> None:
    registered = _register(protocol)
    with pytest.raises(ContractRevertError) as info:
        _register(protocol)
    assert info.value.error_name == "DatanetAlreadyRegistered"
    assert info.value.error_args == {"datanetId": registered}


def test_unauthorised_publisher_changes_nothing(chain: Chain, protocol: Protocol) -> None:
    registered = _register(protocol)
    stranger = chain.dev_accounts[3]
    with pytest.raises(ContractRevertError) as info:
        protocol.datanets.publish_snapshot(registered, H, 1, sender=stranger)
    assert info.value.error_name == "NotPublisher"
    assert info.value.error_args["account"] == stranger.address
    assert protocol.datanets.snapshot_count(registered) == 0
    protocol.datanets.set_curator(registered, stranger.address)
    receipt = protocol.datanets.publish_snapshot(registered, H, 1, sender=stranger)
    assert receipt.event("SnapshotPublished")["index"] == 0
    assert protocol.datanets.get_snapshot(registered, 0).publisher == stranger.address


def test_publish_by_signature_is_relayed_once(chain: Chain, protocol: Protocol) -> None:
    registered = _register(protocol)
    owner, relayer = chain.default_account, chain.dev_accounts[4]
    deadline = chain.block_timestamp() + 3600
    signature = protocol.datanets.sign_publish_snapshot(owner, registered, H, 7, deadline)
    protocol.datanets.publish_snapshot_by_sig(
        registered, H, 7, owner.address, deadline, signature, sender=relayer
    )
    snap = protocol.datanets.get_snapshot(registered, 0)
    assert (snap.root, snap.record_count, snap.publisher) == (H, 7, owner.address)
    with pytest.raises(ContractRevertError, match="InvalidSignature"):
        protocol.datanets.publish_snapshot_by_sig(
            registered, H, 7, owner.address, deadline, signature, sender=relayer
        )
    assert protocol.datanets.snapshot_count(registered) == 1


def test_wrong_signer_is_refused_and_changes_nothing(chain: Chain, protocol: Protocol) -> None:
    registered = _register(protocol)
    owner, mallory = chain.default_account, Account.create()
    deadline = chain.block_timestamp() + 3600
    forged = protocol.datanets.sign_publish_snapshot(mallory, registered, H, 7, deadline)
    with pytest.raises(ContractRevertError) as claimed_owner:
        protocol.datanets.publish_snapshot_by_sig(registered, H, 7, owner.address, deadline, forged)
    assert claimed_owner.value.error_name == "InvalidSignature"
    with pytest.raises(ContractRevertError) as as_herself:
        protocol.datanets.publish_snapshot_by_sig(
            registered, H, 7, mallory.address, deadline, forged
        )
    assert as_herself.value.error_name == "NotPublisher"
    assert protocol.datanets.snapshot_count(registered) == 0
    assert protocol.datanets.nonces(owner.address) == 0
    assert protocol.datanets.nonces(mallory.address) == 0


def test_model_id_on_chain_equals_off_chain_and_registers(protocol: Protocol) -> None:
    manifest = _manifest(roots=(H, "0x" + "cd" * 32))
    me = protocol.chain.default_account.address
    assert protocol.models.model_id_of(manifest, me) == model_id(manifest, me)
    receipt = protocol.models.register_model(manifest, 25)
    assert receipt.event("ModelRegistered")["modelId"] == model_id(manifest, me)
    info = protocol.models.get_model(model_id(manifest, me))
    assert (info.manifest, info.price_per_1k_tokens, info.status, info.registrant) == (
        manifest,
        25,
        ModelStatus.ACTIVE,
        me,
    )


def test_a_copied_registration_gets_its_own_id(chain: Chain, protocol: Protocol) -> None:
    """Front-running: a copy of a pending registration cannot take the author's id."""
    author, copier = chain.dev_accounts[0], chain.dev_accounts[3]
    manifest = _manifest()
    protocol.models.register_model(manifest, 1, sender=copier)
    assert not protocol.models.is_registered(model_id(manifest, author.address))
    receipt = protocol.models.register_model(manifest, 25, sender=author)
    assert receipt.event("ModelRegistered")["modelId"] == model_id(manifest, author.address)
    assert protocol.models.get_model(model_id(manifest, author.address)).owner == author.address
    copied = protocol.models.get_model(model_id(manifest, copier.address))
    assert copied.registrant == copier.address


def test_only_the_model_owner_changes_price_and_status(chain: Chain, protocol: Protocol) -> None:
    manifest = _manifest()
    protocol.models.register_model(manifest, 25)
    ident = model_id(manifest, chain.default_account.address)
    with pytest.raises(ContractRevertError) as info:
        protocol.models.set_price(ident, 1, sender=chain.dev_accounts[2])
    assert info.value.error_name == "NotModelOwner"
    assert protocol.models.get_model(ident).price_per_1k_tokens == 25
    protocol.models.set_status(ident, ModelStatus.DEPRECATED)
    assert protocol.models.get_model(ident).status is ModelStatus.DEPRECATED


def test_unknown_model_and_bad_manifest_revert(protocol: Protocol) -> None:
    with pytest.raises(ContractRevertError) as unknown:
        protocol.models.get_model(H)
    assert (unknown.value.error_name, unknown.value.error_args) == ("UnknownModel", {"modelId": H})
    with pytest.raises(ContractRevertError, match="ZeroWeightsHash"):
        protocol.models.register_model(_manifest(weights="0x" + "00" * 32))
    me = protocol.chain.default_account.address
    assert not protocol.models.is_registered(model_id(_manifest(weights="0x" + "00" * 32), me))


def test_owners_hand_over_and_update(chain: Chain, protocol: Protocol) -> None:
    registered = _register(protocol)
    successor = chain.dev_accounts[5]
    protocol.datanets.update_metadata(registered, "0x" + "ee" * 32, "ipfs://v2")
    protocol.datanets.set_curator(registered, successor.address, True)
    protocol.datanets.set_curator(registered, successor.address, False)
    assert not protocol.datanets.is_publisher(registered, successor.address)
    protocol.datanets.set_curator(registered, chain.dev_accounts[6].address, True)
    protocol.datanets.transfer_datanet_ownership(registered, successor.address)
    assert protocol.datanets.pending_owner(registered) == successor.address
    assert protocol.datanets.get_datanet(registered).owner == chain.default_account.address
    with pytest.raises(ContractRevertError, match="NotPendingOwner"):
        protocol.datanets.accept_datanet_ownership(registered, sender=chain.dev_accounts[6])
    protocol.datanets.accept_datanet_ownership(registered, sender=successor)
    assert protocol.datanets.pending_owner(registered) is None
    assert not protocol.datanets.is_publisher(registered, chain.dev_accounts[6].address)
    with pytest.raises(ContractRevertError, match="NotPublisher"):
        protocol.datanets.publish_snapshot(registered, H, 1)
    info = protocol.datanets.get_datanet(registered)
    assert (info.owner, info.metadata_uri, info.metadata_hash) == (
        successor.address,
        "ipfs://v2",
        "0x" + "ee" * 32,
    )
    with pytest.raises(ContractRevertError, match="NotDatanetOwner"):
        protocol.datanets.update_metadata(registered, H, "ipfs://v3")
    manifest = _manifest()
    protocol.models.register_model(manifest)
    ident = model_id(manifest, chain.default_account.address)
    protocol.models.transfer_model_ownership(ident, successor.address)
    assert protocol.models.pending_owner(ident) == successor.address
    protocol.models.accept_model_ownership(ident, sender=successor)
    assert protocol.models.get_model(ident).owner == successor.address
    protocol.models.set_price(ident, 9, sender=successor)
    assert protocol.models.get_model(ident).price_per_1k_tokens == 9
