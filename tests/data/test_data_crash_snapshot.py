"""Crash safety of snapshots and access decisions: a writer SIGKILLed at any point loses
nothing it had reported as done, and leaves a store that audits clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def wait_for_wal_growth(folder: Path, child: subprocess.Popen[str], grow: int) -> None:
    """Return once the write-ahead log has grown by ``grow`` bytes (a write is under way)."""
    wal = folder / "datanet.sqlite-wal"
    start = wal.stat().st_size if wal.exists() else 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if wal.exists() and wal.stat().st_size > start + grow:
            return
        time.sleep(0.002)


pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")


def run_and_kill(script: str, folder: Path, delay: float | str, *args: str) -> list[str]:
    """Start ``script``, SIGKILL it after ``delay`` (or once the WAL grows), return what it
    reported as done before dying."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(folder), *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    if delay == "wal":
        wait_for_wal_growth(folder, child, grow=256 << 10)
    else:
        time.sleep(float(delay))
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    return [line.split() for line in child.stdout.read().splitlines()]  # type: ignore[misc]


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
