"""How many CPU threads torch may use: the cores this process may run on, not the machine's.

torch's default is one thread per physical core of the machine, which on a machine shared
with other jobs (a CPU set from SLURM or a container, or simply busy cores) makes the threads
wait on each other: the default run took 24 minutes instead of 2 that way.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask: taskset, cgroups' cpusets, SLURM)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_num_threads() -> int:
    """OMP_NUM_THREADS when set (the user's choice), else the available cores shared among the
    processes torchrun started on this machine."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, available_cores() // (int(local) if local.isdigit() and int(local) > 0 else 1))


def set_num_threads(requested: int | None) -> int:
    """Apply trainer.num_threads (None: `default_num_threads()`); -> the count in use."""
    import torch

    count = requested or default_num_threads()
    torch.set_num_threads(count)
    return count
