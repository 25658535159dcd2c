"""Resident-set figures of the running process, for the benchmarks (Linux ``/proc``)."""

from __future__ import annotations


def reset_peak() -> bool:
    """Reset the process's peak RSS (``VmHWM``) so the next reading covers what follows;
    False where the kernel does not allow it (the peak then covers the whole run)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_mib(field: str = "VmHWM") -> float:
    """A ``/proc/self/status`` memory field in MiB (``VmHWM`` peak, ``VmRSS`` now); NaN if
    unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")
