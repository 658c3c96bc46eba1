"""Kill a child process that writes a datanet at a chosen moment (the crash tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def wait_for_wal_growth(folder: Path, child: subprocess.Popen[str], grow: int) -> None:
    """Return once the write-ahead log has grown by ``grow`` bytes: a transaction is
    spilling pages, so a kill now lands inside it."""
    wal = folder / "datanet.sqlite-wal"
    start = wal.stat().st_size if wal.exists() else 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if wal.exists() and wal.stat().st_size > start + grow:
            return
        time.sleep(0.002)


def run_and_kill(
    script: str, folder: Path, delay: float | str, *args: str, grow: int = 256 << 10
) -> list[list[str]]:
    """Run ``script`` with ``folder`` and ``args``; once it prints ``ready``, SIGKILL it
    after ``delay`` seconds (or, for ``"wal"``, once the WAL has grown by ``grow`` bytes);
    return the words of each line it printed before dying."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(folder), *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    if delay == "wal":
        wait_for_wal_growth(folder, child, grow)
    else:
        time.sleep(float(delay))
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    return [line.split() for line in child.stdout.read().splitlines()]
