"""How many CPU threads a run uses when the user does not say (``--threads 0``), and the usable cores.

With one OpenMP thread per core, every parallel region waits for the thread that shares a core another process
keeps busy (``benchmarks/results/shared_machine/shared_machine.md``). So the default counts the cores idle when the run starts
(sampled from ``/proc/stat``), at least one, at most the usable cores. An explicit ``--threads N`` always wins.
"""

from __future__ import annotations

import os
import time


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, e.g. under ``taskset`` or a container quota)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> list[tuple[int, int]] | None:
    """(idle, total) jiffies per CPU from /proc/stat, or None where there is no /proc."""
    try:
        with open("/proc/stat") as handle:
            lines = [line.split() for line in handle if line.startswith("cpu") and line[3].isdigit()]
    except OSError:
        return None
    times = []
    for fields in lines:
        values = [int(v) for v in fields[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        times.append((idle, sum(values)))
    return times


def idle_cores(sample_seconds: float = 0.3) -> float | None:
    """How many of this process's usable cores were idle over a short sample (None if unknown)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(sample_seconds)
    second = _cpu_times()
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = list(range(len(first)))
    idle = 0.0
    for cpu in allowed:
        if cpu >= len(first) or cpu >= len(second):
            continue
        d_idle = second[cpu][0] - first[cpu][0]
        d_total = second[cpu][1] - first[cpu][1]
        idle += d_idle / d_total if d_total > 0 else 1.0
    return idle


def auto_threads() -> int:
    """Threads for ``--threads 0``: the idle usable cores, rounded, between 1 and the usable cores."""
    cores = usable_cores()
    idle = idle_cores()
    if idle is None:
        return cores
    return max(1, min(cores, int(idle + 0.5)))


def set_threads(requested: int) -> int:
    """Set torch's intra-op threads: ``requested`` if > 0, else :func:`auto_threads`. Returns the count."""
    import torch

    count = requested if requested > 0 else auto_threads()
    torch.set_num_threads(count)
    return count
