"""What this process may use of the CPU: instruction sets and core count (no torch needed)."""

import math
import os
from pathlib import Path


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags the kernel reports for this CPU (x86 `flags`, arm64 `Features`)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_quota_threads() -> int:
    """Number of CPUs this process may use: cgroup CPU quota, else affinity, else os.cpu_count()."""
    try:
        n_aff = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n_aff = os.cpu_count() or 1
    quota: float | None = None
    try:  # cgroup v2
        parts = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if parts and parts[0] != "max":
            quota = int(parts[0]) / int(parts[1])
    except (OSError, ValueError, IndexError):
        pass
    if quota is None:
        try:  # cgroup v1
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            if q > 0 and p > 0:
                quota = q / p
        except (OSError, ValueError):
            pass
    n = n_aff if quota is None else min(n_aff, max(1, math.floor(quota)))
    return max(1, n)
