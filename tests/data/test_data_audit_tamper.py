"""Tampering with the SQLite file directly: every change that could move money is named by
``audit()``, and a snapshot is built from signatures, not from editable columns."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from datanet_rows import rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.data.store_edits import edit_store, read_store

from openledger.crypto import Account, to_hex
from openledger.data import Datanet, InstructionRecord
from openledger.data.snapshot import make_manifest, manifest_hash, snapshot_root
from openledger.exceptions import StoreError

MALLORY = Account.from_key("0x" + "66" * 32)


def tamper(dn: Datanet, *statements: tuple[str, tuple[object, ...]]) -> None:
    edit_store(dn, *statements)


@pytest.fixture
def filled(dn: Datanet, alice: Account, bob: Account) -> Datanet:
    dn.contribute(rows(3), contributor=alice)
    dn.contribute(rows(2, "b"), contributor=bob)
    dn.snapshot()
    assert dn.audit().ok
    return dn


def test_a_record_handed_to_another_contributor_is_named(
    filled: Datanet, alice: Account, bob: Account
) -> None:
    tamper(filled, ("UPDATE records SET contributor = ? WHERE id = 2", (MALLORY.address,)))
    assert filled.audit().problems == [
        f"record 2: contributor {MALLORY.address} is not {alice.address}, who signed contribution 1"
    ]
    # The next snapshot still pays the signer: leaves come from the signed contribution.
    snap = filled.snapshot()
    assert snap.contributors == {alice.address: 3, bob.address: 2}


def test_a_status_that_no_signed_review_decided_is_named(
    filled: Datanet, alice: Account, owner: Account
) -> None:
    first = filled.snapshot_at(1).record_hashes()[0]
    filled.review(first, accept=False, reason="copied from a textbook", validator=owner)
    tamper(
        filled,
        ("UPDATE records SET status = 'accepted' WHERE id = 1", ()),
        ("UPDATE records SET status = 'rejected' WHERE id = 4", ()),
    )
    assert filled.audit().problems == [
        "record 1: status 'accepted' is not 'rejected', what its latest signed review decided",
        "record 4: status 'rejected' is not 'accepted', what its latest signed review decided",
    ]


def test_a_validator_added_by_hand_is_named_and_its_reviews_do_not_count(
    filled: Datanet,
) -> None:
    tamper(filled, ("INSERT INTO validators (address) VALUES (?)", (MALLORY.address,)))
    assert MALLORY.address not in filled.validators()
    first = filled.snapshot_at(1).record_hashes()[0]
    from openledger.data.signing import review_message

    signature = MALLORY.sign_typed_data(review_message(filled.id, first, False, "mine now"))
    tamper(
        filled,
        (
            "INSERT INTO reviews (record_id, validator, accept, reason, signature, created_at)"
            " VALUES (1, ?, 0, 'mine now', ?, 0)",
            (MALLORY.address, signature),
        ),
        ("UPDATE records SET status = 'rejected' WHERE id = 1", ()),
    )
    assert filled.audit().problems == [
        f"validator {MALLORY.address}: not signed by the owner; its reviews do not count",
        "record 1: status 'rejected' is not 'accepted', what its latest signed review decided",
    ]


def test_a_deleted_contribution_is_named_by_the_nonce_gap(filled: Datanet, alice: Account) -> None:
    filled.contribute(rows(1, "c"), contributor=alice)
    filled.contribute(rows(1, "d"), contributor=alice)
    tamper(
        filled,
        ("DELETE FROM records WHERE contribution_id = 3", ()),
        ("DELETE FROM contributions WHERE id = 3", ()),
    )
    assert filled.audit().problems == [
        f"contributor {alice.address}: signed nonces [1] are missing (a contribution was deleted)"
    ]


def test_a_snapshot_root_that_does_not_follow_its_leaves_is_named(filled: Datanet) -> None:
    tamper(filled, ("UPDATE snapshots SET root = ? WHERE id = 1", (b"\x11" * 32,)))
    assert filled.audit().problems == [
        "snapshot 1: stored root is not the root of its leaves",
    ]


def test_snapshot_leaves_that_pay_someone_else_are_named(filled: Datanet, alice: Account) -> None:
    """Leaves, root, manifest and its hash rewritten consistently: only the signatures
    behind the records can tell."""
    leaves, text = read_store(filled, "SELECT leaves, manifest FROM snapshots WHERE id = 1")
    forged = leaves[:32] + bytes.fromhex(MALLORY.address[2:]) + leaves[52:]
    import json

    root = snapshot_root(forged)
    manifest = make_manifest(json.loads(text), forged, root, json.loads(text)["created_at"])
    tamper(
        filled,
        (
            "UPDATE snapshots SET leaves = ?, root = ?, manifest = ?, manifest_hash = ?"
            " WHERE id = 1",
            (
                forged,
                bytes.fromhex(root[2:]),
                json.dumps(manifest, sort_keys=True, separators=(",", ":")),
                bytes.fromhex(manifest_hash(manifest)[2:]),
            ),
        ),
    )
    first = to_hex(forged[:32])
    assert filled.audit().problems == [
        f"snapshot 1: leaf 0 pays {MALLORY.address} for record {first}, whose contribution "
        f"{alice.address} signed"
    ]


def test_a_manifest_that_does_not_follow_its_leaves_is_named(filled: Datanet) -> None:
    tamper(filled, ("UPDATE snapshots SET manifest_hash = ? WHERE id = 1", (b"\x22" * 32,)))
    assert filled.audit().problems == ["snapshot 1: manifest does not hash to its manifest_hash"]


def test_an_edited_owner_is_refused_on_open_and_named_by_audit(filled: Datanet) -> None:
    tamper(filled, ("UPDATE meta SET value = ? WHERE key = 'owner'", (MALLORY.address,)))
    problems = filled.audit().problems
    assert len(problems) == 1
    assert problems[0].startswith("settings: its settings (name, schema_id, schema_ref,")
    with pytest.raises(StoreError, match="was tampered with: its settings"):
        Datanet.open(filled.path)


@dataclass
class Published:
    root: str
    record_count: int


class FakeRegistry:
    """The two reads of ``DatanetRegistryClient`` the audit makes."""

    def __init__(self, published: list[Published]) -> None:
        self.published = published

    def snapshot_count(self, datanet: str) -> int:
        return len(self.published)

    def get_snapshot(self, datanet: str, index: int) -> Published:
        return self.published[index]


@dataclass
class FakeProtocol:
    datanets: FakeRegistry


def test_a_chain_root_that_is_no_snapshot_of_the_store_is_named(filled: Datanet) -> None:
    snap = filled.snapshot_at(1)
    good = FakeProtocol(FakeRegistry([Published(snap.root, snap.count)]))
    assert filled.audit(protocol=good, chain_datanet_id="0x01").ok
    other = "0x" + "33" * 32
    bad = FakeProtocol(FakeRegistry([Published(snap.root, snap.count), Published(other, 5)]))
    assert filled.audit(protocol=bad, chain_datanet_id="0x01").problems == [
        f"chain snapshot 1: root {other} (5 records) is not a snapshot of this datanet's store"
    ]


TAMPERS = {
    "record contributor": "UPDATE records SET contributor = ? WHERE id = ?",
    "record status": "UPDATE records SET status = 'rejected' WHERE id = ? AND ? IS NOT NULL",
    "contribution contributor": (
        "UPDATE contributions SET contributor = ? WHERE id ="
        " (SELECT contribution_id FROM records WHERE id = ?)"
    ),
}


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    kind=st.sampled_from(sorted(TAMPERS)),
    pick=st.integers(0, 1000),
)
def test_any_money_relevant_edit_is_named(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], kind: str, pick: int
) -> None:
    folder = tmp_path_factory.mktemp("prop") / "dn"
    dn = Datanet.create(folder, name="p", schema=InstructionRecord, near_duplicate_threshold=0)
    for number, size in enumerate(sizes):
        dn.contribute(
            rows(size, f"c{number}"), contributor=Account.from_key(f"0x{number + 1:064x}")
        )
    target = pick % len(dn) + 1
    params: tuple[object, ...] = (
        (MALLORY.address, target) if kind != "record status" else (target, 1)
    )
    tamper(dn, (TAMPERS[kind], params))
    report = dn.audit()
    assert not report.ok
    assert any(f"record {target}" in p or "contribution" in p for p in report.problems)
    dn.close()
