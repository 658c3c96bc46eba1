"""Crash safety: a writer SIGKILLed mid-contribution leaves all of it or none."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.data.crash_helpers import run_and_kill

from openledger.data import Datanet, InstructionRecord

WRITER = r"""
import sys
from openledger.crypto import Account
from openledger.data import Datanet
dn = Datanet.open(sys.argv[1])
alice = Account.from_key("0x" + "a1" * 32)
rows = [{"instruction": f"crash test question {i}", "response": f"answer {i} " * 20}
        for i in range(int(sys.argv[2]))]
print("ready", flush=True)
dn.contribute(rows, contributor=alice)
print("done", flush=True)
"""

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")


@pytest.mark.parametrize("delay", [0.05, 0.8, "wal"])
def test_sigkill_during_a_large_contribution_leaves_all_or_nothing(
    tmp_path: Path, delay: float | str
) -> None:
    folder = tmp_path / "dn"
    Datanet.create(folder, name="crash", schema=InstructionRecord).close()
    n = 15_000
    run_and_kill(WRITER, folder, delay, str(n), grow=1 << 20)
    dn = Datanet.open(folder)
    stored = len(dn)
    assert stored in (0, n)
    contributions = dn._store.conn.execute("SELECT COUNT(*) FROM contributions").fetchone()[0]
    assert contributions == (1 if stored else 0)
    assert dn._store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    receipts = dn.contribute(
        [{"instruction": "after the crash", "response": "still fine"}],
        contributor=__import__("openledger").crypto.Account.from_key("0x" + "a1" * 32),
    )
    assert receipts[0].contribution_id == contributions + 1
    dn.close()


def test_reader_sees_no_partial_contribution_while_a_writer_works(tmp_path: Path) -> None:
    folder = tmp_path / "dn"
    Datanet.create(folder, name="concurrent", schema=InstructionRecord).close()
    n = 10_000
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder), str(n)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    reader = Datanet.open(folder)
    seen = set()
    while child.poll() is None:
        seen.add(len(reader))
        time.sleep(0.01)
    seen.add(len(reader))
    assert seen <= {0, n}
    assert n in seen
    reader.close()
