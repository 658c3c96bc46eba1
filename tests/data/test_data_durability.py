"""Durability of the store: fsync'd commits, private file modes, failed commits, migrations
and owner decisions that race with other processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from test_data_audit import downgrade_to_version_1

from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord
from openledger.data.store import SCHEMA_VERSION, Store
from openledger.exceptions import ConfigError, StoreError

ROW = {"instruction": "What does the mitral valve separate?", "response": "Atrium, ventricle."}


def test_commits_are_fsynced_unless_asked_otherwise(sqlite_dn: Datanet, tmp_path: Path) -> None:
    dn = sqlite_dn
    assert dn._store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    fast = Datanet.open(dn.path, durability="normal")
    assert fast._store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    fast.close()
    with pytest.raises(ConfigError, match="durability must be 'full' or 'normal'"):
        Datanet.open(dn.path, durability="off")  # type: ignore[arg-type]


def test_the_store_is_readable_by_its_owner_only(sqlite_dn: Datanet, alice: Account) -> None:
    dn = sqlite_dn
    dn.contribute([ROW], contributor=alice)
    assert stat.S_IMODE(dn.path.stat().st_mode) == 0o700
    for name in ("datanet.sqlite", "datanet.sqlite-wal", "datanet.sqlite-shm"):
        assert stat.S_IMODE((dn.path / name).stat().st_mode) == 0o600, name


def commit_a_dangling_flag(store: Store) -> None:
    """A write whose COMMIT fails: a deferred foreign key is only checked at COMMIT."""
    with store.write() as conn:
        conn.execute("PRAGMA defer_foreign_keys=ON")
        conn.execute("INSERT INTO flags (record_id, kind, detail) VALUES (999, 'x', 'y')")


def test_a_failed_commit_rolls_back_and_raises_store_error(
    sqlite_dn: Datanet, alice: Account
) -> None:
    dn = sqlite_dn
    store = dn._store
    with pytest.raises(StoreError, match="failed and was rolled back: FOREIGN KEY"):
        commit_a_dangling_flag(store)
    assert not store.conn.in_transaction
    assert store.conn.execute("SELECT COUNT(*) FROM flags").fetchone()[0] == 0
    assert len(dn.contribute([ROW], contributor=alice)) == 1
    assert len(dn) == 1


def make_version_one(folder: Path, alice: Account) -> None:
    """A datanet file as the first store layout wrote it (before ``record_hashes``)."""
    dn = Datanet.create(folder, name="old", schema=InstructionRecord)
    dn.contribute([ROW], contributor=alice)
    dn.close()
    downgrade_to_version_1(folder / "datanet.sqlite", dn.id, alice)


def _open_at_once(folders: list[str], barrier: multiprocessing.synchronize.Barrier) -> None:
    for folder in folders:
        barrier.wait(timeout=20)
        Store(folder).close()


@pytest.mark.parametrize("rounds", [6])
def test_two_processes_upgrading_one_old_file_both_succeed(
    tmp_path: Path, alice: Account, rounds: int
) -> None:
    folders = [tmp_path / f"dn{n}" for n in range(rounds)]
    for folder in folders:
        make_version_one(folder, alice)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    names = [str(f) for f in folders]
    workers = [context.Process(target=_open_at_once, args=(names, barrier)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    for folder in folders:
        dn = Datanet.open(folder)
        assert dn._store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert dn.audit().ok
        dn.close()


def test_an_owner_decision_checks_the_status_inside_its_transaction(
    tmp_path: Path, owner: Account, bob: Account
) -> None:
    dn = Datanet.create(
        tmp_path / "p", name="p", schema=InstructionRecord, visibility="private", owner=owner
    )
    request = dn.request_access(bob, "research")
    held, release = threading.Event(), threading.Event()

    def deny_elsewhere() -> None:
        # Another process's owner denies the request while this one is about to approve.
        conn = sqlite3.connect(dn.path / "datanet.sqlite", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE access_requests SET status = 'denied' WHERE id = ?", (request.id,))
        held.set()
        release.wait(5)
        conn.execute("COMMIT")
        conn.close()

    other = threading.Thread(target=deny_elsewhere)
    other.start()
    held.wait(5)
    threading.Timer(0.3, release.set).start()
    with pytest.raises(ConfigError, match="is denied, not pending"):
        dn.approve(request.id, owner=owner)
    other.join()
    assert dn.access_request(request.id).status == "denied"
    assert dn._store.conn.execute("SELECT COUNT(*) FROM grants").fetchone()[0] == 0
    dn.close()
