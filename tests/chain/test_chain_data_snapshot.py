"""Acceptance: a snapshot made by openledger.data is published and every record proven on chain."""

from __future__ import annotations

from pathlib import Path

import openledger.data as data
from openledger.chain import Account, Chain, Protocol, record_leaf
from openledger.crypto import StandardMerkleTree


def _snapshot(folder: Path) -> data.Snapshot:
    datanet = data.Datanet.create(folder, name="medqa", schema=data.InstructionRecord)
    alice, bob = Account.create(), Account.create()
    for who, n in ((alice, 7), (bob, 6)):
        rows = [
            {"instruction": f"question {who.address} {i}", "response": f"answer {i}"}
            for i in range(n)
        ]
        datanet.contribute(rows, contributor=who)
    return datanet.snapshot()


def test_data_snapshot_records_are_proven_on_chain(
    chain: Chain, protocol: Protocol, tmp_path: Path
) -> None:
    snap = _snapshot(tmp_path / "medqa")
    schema = data.schema_hash(data.InstructionRecord)
    receipt = protocol.datanets.register_datanet(
        "medqa", schema, snap.manifest_hash, "file://medqa"
    )
    datanet_id = receipt.event("DatanetRegistered")["datanetId"]
    assert snap.root.lower() not in protocol.datanets.published_roots()
    published = protocol.datanets.publish_snapshot(datanet_id, snap.root, snap.count)
    index = published.event("SnapshotPublished")["index"]
    assert protocol.datanets.get_snapshot(datanet_id, index).root == snap.root
    assert snap.root.lower() in protocol.datanets.published_roots()
    hashes = snap.record_hashes()
    assert len(hashes) == snap.count == 13
    outsider = Account.create().address
    for record_hash in hashes:
        digest, contributor = snap.leaf(record_hash)
        proof = snap.proof(record_hash)
        assert protocol.datanets.contains_record(datanet_id, index, digest, contributor, proof)
        assert not protocol.datanets.contains_record(datanet_id, index, digest, outsider, proof)


def test_record_leaf_and_root_match_the_data_layer(tmp_path: Path) -> None:
    snap = _snapshot(tmp_path / "medqa")
    leaves = [snap.leaf(h) for h in snap.record_hashes()]
    tree = StandardMerkleTree.of(leaves, data.SNAPSHOT_LEAF_ENCODING)
    assert tree.root == snap.root
    assert {record_leaf(*leaf) for leaf in leaves} == {tree.leaf_hash(i) for i in range(len(tree))}
