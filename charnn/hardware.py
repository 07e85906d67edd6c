"""What the machine offers: the physical CPU cores this process may use (no torch import here).

How many of them torch's threads use is :mod:`charnn.threads`' decision. History: ``--threads``
used to default to these cores less one, which trains at ~0.6x on a 2-core machine.
"""

from __future__ import annotations

import os
from pathlib import Path


def _allowed_cpus() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (hyper-threads counted once)."""
    cpus = _allowed_cpus()
    cores: set[str] = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                cores.add((topo / name).read_text().strip())
                break
            except OSError:
                continue
        else:
            return max(1, len(cpus))  # no topology (macOS, Windows): count logical CPUs
    return max(1, len(cores))
