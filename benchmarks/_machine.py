"""What every benchmark prints about the machine it ran on."""

from __future__ import annotations

import os
import platform


def describe_machine(*extras: str) -> str:
    """Return "CPU model, N cores, <extras...>, Python X.Y.Z" for a benchmark's header."""
    model = platform.processor() or platform.machine() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if "model name" in line)
    except (OSError, StopIteration):
        pass
    return ", ".join(
        [model, f"{os.cpu_count()} cores", *extras, f"Python {platform.python_version()}"]
    )
