"""Memory readings shared by the benchmarks (Linux: /proc and getrusage)."""

from __future__ import annotations

import resource


def rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
