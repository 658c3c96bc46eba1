"""The PostgreSQL store: the same datanet as on SQLite, on a real server.

Every test takes a fresh schema on the session's server (``postgres.fresh_url()``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from datanet_rows import rows
from tests.data.postgres_server import PostgresServer

from openledger.crypto import Account
from openledger.data import (
    Datanet,
    InstructionRecord,
    TextRecord,
    commitment_of,
    sign_contribution,
    verify_proof,
)
from openledger.data.store import MIGRATIONS, SCHEMA_VERSION
from openledger.data.store_postgres import PostgresStore, postgres_ddl, redacted, split_url
from openledger.exceptions import (
    AccessDeniedError,
    ConfigError,
    DuplicateRecordError,
    NonceError,
    QualityError,
    SchemaError,
    SignatureError,
    StoreError,
)


def counts(dn: Datanet) -> tuple[int, int, int]:
    """Records, contributions and flags: what a refused contribution must leave as it was."""
    conn = dn._store.conn
    contributions = conn.execute("SELECT COUNT(*) FROM contributions").fetchone()[0]
    flags = conn.execute("SELECT COUNT(*) FROM flags").fetchone()[0]
    return len(dn), int(contributions), int(flags)


@pytest.fixture
def pg(postgres: PostgresServer, owner: Account) -> Datanet:
    datanet = Datanet.create(
        postgres.fresh_url(), name="medqa", schema=InstructionRecord, owner=owner
    )
    yield datanet  # type: ignore[misc]
    datanet.close()


def test_contribute_read_reopen_and_audit(pg: Datanet, alice: Account) -> None:
    receipts = pg.contribute(rows(5), contributor=alice)
    assert [r.position for r in receipts] == list(range(5))
    assert pg.get(receipts[3].record_hash).record == InstructionRecord(**rows(5)[3])
    assert [r.record_hash for r in pg.records()] == [r.record_hash for r in receipts]
    assert isinstance(pg._store, PostgresStore)
    with Datanet.open(pg.path) as again:
        assert (again.id, len(again), again.next_nonce(alice)) == (pg.id, 5, 1)
        assert again.contributors() == {alice.address: 5}
    assert pg.audit().ok


def test_same_records_give_the_same_root_on_sqlite_and_postgres(
    pg: Datanet, tmp_path: Path, owner: Account, alice: Account, bob: Account
) -> None:
    lite = Datanet.create(tmp_path / "lite", name="medqa", schema=InstructionRecord, owner=owner)
    for dn in (lite, pg):
        dn.contribute(rows(40), contributor=alice)
        dn.contribute(rows(25, "b"), contributor=bob)
        dn.review(dn.record_hash(rows(40)[7]), accept=False, reason="off topic", validator=owner)
    snaps = [dn.snapshot() for dn in (lite, pg)]
    assert snaps[0].root == snaps[1].root
    assert snaps[0].count == snaps[1].count == 64
    assert snaps[0].record_hashes() == snaps[1].record_hashes()
    digest = snaps[1].record_hashes()[50]  # one of bob's (after alice's 39 accepted)
    assert snaps[0].proof(digest) == snaps[1].proof(digest)
    assert verify_proof(snaps[1].root, digest, bob.address, snaps[1].proof(digest))
    assert pg.snapshot_at(1).manifest["contributors"] == snaps[0].manifest["contributors"]
    lite.close()


def test_refusals_store_nothing(pg: Datanet, alice: Account, bob: Account) -> None:
    pg.contribute(rows(3), contributor=alice)
    before = counts(pg)
    signed = pg.sign(rows(2, "n"), contributor=alice)
    late = signed.model_copy(update={"deadline": 1})
    forged = signed.model_copy(update={"contributor": bob.address})
    refusals = [
        (SchemaError, lambda: pg.contribute([{"instruction": "only"}], contributor=alice)),
        (DuplicateRecordError, lambda: pg.contribute(rows(4), contributor=alice)),
        (SignatureError, lambda: pg.contribute(rows(2, "n"), signed=late)),
        (SignatureError, lambda: pg.contribute(rows(2, "n"), signed=forged)),
        (SignatureError, lambda: pg.contribute(rows(2, "other"), signed=signed)),
    ]
    for error, call in refusals:
        with pytest.raises(error):
            call()
        assert counts(pg) == before
    pg.contribute(rows(2, "n"), signed=signed)
    hashes = [bytes.fromhex(pg.record_hash(r)[2:]) for r in rows(2, "m")]
    replayed = sign_contribution(hashes, datanet_id=pg.id, contributor=alice, nonce=0)
    with pytest.raises(NonceError, match="already used"):
        pg.contribute(rows(2, "m"), signed=replayed)
    assert counts(pg)[0] == before[0] + 2
    assert pg.audit().ok


def test_quality_rules_and_near_duplicates(postgres: PostgresServer, alice: Account) -> None:
    from openledger.data import LengthRule

    url = postgres.fresh_url()
    dn = Datanet.create(url, name="t", schema=TextRecord, rules=[LengthRule(min_chars=10)])
    with pytest.raises(QualityError):
        dn.contribute([{"text": "short"}], contributor=alice)
    text = "the quick brown fox jumps over the lazy dog near the quiet river bank today"
    first = dn.contribute([{"text": text}], contributor=alice)
    second = dn.contribute([{"text": text + " again"}], contributor=alice)
    assert second[0].near_duplicates == (first[0].record_hash,)
    assert dn.flags(second[0].record_hash) == [("near-duplicate", first[0].record_hash)]
    dn.close()


def test_governance_and_private_access(
    postgres: PostgresServer, owner: Account, alice: Account, bob: Account
) -> None:
    dn = Datanet.create(
        postgres.fresh_url(), name="clinic", schema=InstructionRecord,
        visibility="private", owner=owner,
    )  # fmt: skip
    dn.contribute(rows(3), contributor=owner)
    with pytest.raises(AccessDeniedError):
        list(dn.records())
    request = dn.request_access(alice, "fine-tune a triage model")
    grant = dn.approve(request.id, owner=owner, ttl_seconds=600)
    assert len(list(dn.records(grant=grant))) == 3
    denied = dn.request_access(bob, "curiosity")
    dn.deny(denied.id, owner=owner)
    assert dn.access_request(denied.id).status == "denied"
    dn.add_validator(bob, owner=owner)
    digest = dn.record_hash(rows(3)[0])
    dn.review(digest, accept=False, reason="wrong dose", validator=bob)
    assert dn.reviews(digest)[0].reason == ""  # no grant: the reason stays private
    assert dn.reviews(digest, grant=grant)[0].reason == "wrong dose"
    assert dn.reputation(owner).rejected == 1
    dn.revoke(request.id, owner=owner)
    assert not dn.can_read(grant)
    assert dn.audit().ok
    dn.close()


def test_a_failed_write_rolls_back_and_the_handle_stays_usable(pg: Datanet, alice: Account) -> None:
    with pytest.raises(StoreError, match="violates foreign key"), pg._store.write() as conn:
        conn.execute("INSERT INTO flags (record_id, kind, detail) VALUES (999, 'x', 'y')")
    assert pg._store.conn.execute("SELECT COUNT(*) FROM flags").fetchone()[0] == 0
    assert len(pg.contribute(rows(1), contributor=alice)) == 1


def test_commitments_count_new_ones_only(pg: Datanet, alice: Account) -> None:
    commitments = [commitment_of(pg.record_hash(r), alice.address) for r in rows(3)]
    assert pg.commit(commitments, contributor=alice) == 3
    assert pg.commit(commitments[:2], contributor=alice) == 0
    pg.contribute(rows(3), contributor=alice)
    assert pg._store.conn.execute("SELECT COUNT(*) FROM commitments").fetchone()[0] == 0


def test_the_store_is_at_the_latest_version_and_refuses_what_it_cannot_open(
    postgres: PostgresServer, pg: Datanet
) -> None:
    assert pg._store.conn.execute("SELECT version FROM store_version").fetchone()[0] == (
        SCHEMA_VERSION
    )
    with pytest.raises(StoreError, match="already holds a datanet"):
        Datanet.create(str(pg.path), name="again", schema=InstructionRecord)
    with pytest.raises(StoreError, match="holds no datanet"):
        Datanet.open(postgres.fresh_url())
    pg._store.conn.execute("UPDATE store_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this openledger"):
        Datanet.open(str(pg.path))
    with pytest.raises(ConfigError, match="schema name"):
        Datanet.open(postgres.url("Bad-Name"))
    with pytest.raises(StoreError, match="cannot connect"):
        Datanet.open("postgresql://openledger@127.0.0.1:1/postgres")


def test_an_old_schema_is_migrated_once(postgres: PostgresServer, alice: Account) -> None:
    url = postgres.fresh_url()
    store = PostgresStore(url, create=True)
    with store.write() as conn:
        # NOTE: rebuild the schema as version 1 left it: drop everything, replay migration 1
        for table in ("commitments", "snapshots", "grants", "access_requests", "validators",
                      "reviews", "flags", "records", "contributions", "meta"):  # fmt: skip
            conn.execute(f"DROP TABLE {table}")
        for statement in MIGRATIONS[0].split(";"):
            if statement.strip():
                conn.execute(postgres_ddl(statement))
        conn.execute("UPDATE store_version SET version = 1")
    store.close()
    upgraded = PostgresStore(url)
    assert upgraded.conn.execute("SELECT version FROM store_version").fetchone()[0] == 3
    columns = upgraded.conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'contributions'"
    ).fetchall()
    assert {"record_hashes", "deadline"} <= {c[0] for c in columns}
    upgraded.close()


def test_urls_and_ddl() -> None:
    assert split_url("postgresql://u:pw@h:5/db?datanet=medqa&sslmode=disable") == (
        "postgresql://u:pw@h:5/db?sslmode=disable",
        "medqa",
    )
    assert split_url("postgres://h/db")[1] == "public"
    assert redacted("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    with pytest.raises(ConfigError, match="database"):
        split_url("postgresql://h")
    ddl = postgres_ddl("CREATE TABLE flags (record_id INTEGER NOT NULL, blob BLOB, at REAL)")
    assert "rowid BIGINT GENERATED ALWAYS AS IDENTITY" in ddl
    assert "record_id BIGINT NOT NULL, blob BYTEA, at DOUBLE PRECISION" in ddl
    assert "GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY" in postgres_ddl("id INTEGER PRIMARY KEY")
