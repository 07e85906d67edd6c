"""What the machine offers training: CPU cores for torch's threads (no torch import here).

``--threads`` defaults to :func:`default_threads`: the physical cores this process may run on,
less one, and at least one. Measured on a 2-core AMD EPYC shared with other work (2x256 LSTM,
batch 16 x 128): with the machine busy (load 12) 1 thread trained at 4.2-7.4k chars/s and 2
threads at 0.2-0.6k - OpenMP's spin-waiting threads collapse when another process holds a
core; at load 1.5-2, 1 thread 9.6-16.8k and 2 threads 10.3-13.7k. A core left free keeps the
collapse from happening and costs little. The count is a function of the machine, not of its load at start-up,
because the number of threads changes the order of floating-point sums: a run must give the
same weights when the same command is run again on the same machine.
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


def default_threads() -> int:
    """Threads for training when ``--threads`` is not given (see the module docstring)."""
    return max(1, physical_cores() - 1)


def threads_for(requested: int | None) -> int | None:
    """The thread count to set: the user's, else None when ``OMP_NUM_THREADS`` already decides,
    else :func:`default_threads`."""
    if requested is not None:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return default_threads()
