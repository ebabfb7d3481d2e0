"""Resident-memory readings for the benchmarks (Linux ``/proc/self``; ``ru_maxrss`` elsewhere)."""

from __future__ import annotations

import resource
from pathlib import Path


def rss_mib(key: str = "VmRSS") -> float:
    """``VmRSS`` / ``VmHWM`` / ``RssAnon`` / ``RssFile`` of this process in MiB."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return int(next(x for x in status.splitlines() if x.startswith(key + ":")).split()[1]) / 1024


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS, so the next peak is the next step's own (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
