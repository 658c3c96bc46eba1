"""Scratch folders for benchmarks: removed when the benchmark exits.

Benchmarks write adapters, checkpoints and datanets of hundreds of MB; left behind, a few
runs fill a small disk. Set ``OPENLEDGER_KEEP_SCRATCH=1`` to keep them for inspection.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path


def scratch_dir(prefix: str) -> Path:
    """A new empty folder under the system temp dir, removed at exit (printed if kept)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if os.environ.get("OPENLEDGER_KEEP_SCRATCH"):
        atexit.register(print, f"scratch kept: {folder}")
    else:
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
