"""Crash safety of snapshots and access decisions: a writer SIGKILLed at any point loses
nothing it had reported as done, and leaves a store that audits clean."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from tests.data.crash_helpers import run_and_kill

from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord

OWNER_KEY = "0x" + "0e" * 32

SNAPSHOTTER = r"""
import sys
from openledger.crypto import Account
from openledger.data import Datanet
dn = Datanet.open(sys.argv[1])
alice = Account.from_key("0x" + "a1" * 32)
print("ready", flush=True)
for round in range(1000):
    dn.contribute([{"instruction": f"q {round} {i}", "response": "a " * 30} for i in range(300)],
                  contributor=alice)
    snap = dn.snapshot()
    print(f"snapshot {snap.id} {snap.root} {snap.count}", flush=True)
"""

APPROVER = r"""
import sys
from openledger.crypto import Account
from openledger.data import Datanet
dn = Datanet.open(sys.argv[1])
owner = Account.from_key(sys.argv[2])
print("ready", flush=True)
for round in range(100000):
    request = dn.request_access(Account.create(), f"research {round}")
    grant = dn.approve(request.id, owner=owner, ttl_seconds=3600)
    print(f"approved {request.id} {grant.signature}", flush=True)
"""


pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")


@pytest.mark.parametrize("delay", [0.3, 1.1, 2.3, "wal"])
def test_sigkill_during_snapshots_loses_no_reported_snapshot(
    tmp_path: Path, delay: float | str
) -> None:
    folder = tmp_path / "dn"
    Datanet.create(folder, name="crash", schema=InstructionRecord).close()
    reported = run_and_kill(SNAPSHOTTER, folder, delay)
    dn = Datanet.open(folder)
    for _, number, root, count in reported:
        snap = dn.snapshot_at(int(number))
        assert (snap.root, snap.count) == (root, int(count))
    assert len(dn.snapshots()) >= len(reported)
    assert dn._store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert dn.audit().ok, dn.audit().problems
    dn.close()


@pytest.mark.parametrize("delay", [0.2, 0.9, 1.7])
def test_sigkill_during_approvals_loses_no_reported_grant(
    tmp_path: Path, delay: float | str
) -> None:
    owner = Account.from_key(OWNER_KEY)
    folder = tmp_path / "dn"
    Datanet.create(
        folder, name="crash", schema=InstructionRecord, visibility="private", owner=owner
    ).close()
    reported = run_and_kill(APPROVER, folder, delay, OWNER_KEY)
    dn = Datanet.open(folder)
    for _, number, signature in reported:
        assert dn.access_request(int(number)).status == "approved"
        stored = dn._store.conn.execute(
            "SELECT signature FROM grants WHERE request_id = ?", (int(number),)
        ).fetchone()
        assert "0x" + bytes(stored[0]).hex() == signature
    statuses = dn._store.conn.execute(
        "SELECT COUNT(*) FROM access_requests LEFT JOIN grants ON grants.request_id = id"
        " WHERE status = 'approved' AND grants.request_id IS NULL"
    ).fetchone()[0]
    assert statuses == 0  # never approved without its grant, nor the reverse
    assert dn._store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    dn.close()
