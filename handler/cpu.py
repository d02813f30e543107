"""What this process may use of the CPU: instruction sets and core count (no torch needed)."""

import math
import os
from collections.abc import Mapping
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
"""Where the kernel describes the CPUs: one block per CPU, the same flags in each."""


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The instruction-set flags the kernel reports for this CPU (x86 `flags`, arm64 `Features`)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


ONEDNN_CAPS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)
"""Values of oneDNN's `ONEDNN_MAX_CPU_ISA` below its first instruction set with bf16 dot products
(AVX512_CORE_BF16): under them torch's bf16 convolutions and products are emulated, and slow."""


def onednn_isa_cap(environ: Mapping[str, str] = os.environ) -> str | None:
    """The instruction set oneDNN (torch's convolutions) is capped at, upper-case; None if uncapped."""
    value = environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value and value.strip() else None


def cpu_has_bf16(flags: frozenset[str] | None = None, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether torch computes bf16 natively here: the CPU has bf16 matrix instructions (AVX512-BF16
    or AMX) and `ONEDNN_MAX_CPU_ISA` does not hold oneDNN below them."""
    flags = cpu_flags() if flags is None else flags
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and onednn_isa_cap(environ) not in ONEDNN_CAPS_WITHOUT_BF16


CGROUP_ROOT = Path("/sys/fs/cgroup")
"""Where the kernel mounts this process's cgroup (in a container, the container's own)."""


def cgroup_v2_quota(cpu_max: Path) -> float | None:
    """CPUs a cgroup v2 `cpu.max` ("<quota> <period>") allows; None when unlimited ("max") or unreadable."""
    try:
        parts = cpu_max.read_text().split()
        if parts and parts[0] != "max":
            return int(parts[0]) / int(parts[1])
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        pass
    return None


def cgroup_v1_quota(quota_us: Path, period_us: Path) -> float | None:
    """CPUs cgroup v1's CFS quota and period allow; None when unlimited (quota -1) or unreadable."""
    try:
        quota = int(quota_us.read_text())
        period = int(period_us.read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs this process's cgroup allows: cgroup v2's `cpu.max`, else v1's `cpu/cpu.cfs_*`; None if unlimited."""
    quota = cgroup_v2_quota(root / "cpu.max")
    if quota is None:
        quota = cgroup_v1_quota(root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us")
    return quota


def affinity_cpus() -> int:
    """CPUs the scheduler may run this process on, else all the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # sched_getaffinity is Linux-only
        return os.cpu_count() or 1


def cpu_quota_threads(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Number of CPUs this process may use: the cgroup CPU quota (whole CPUs) capped by its affinity, at least 1.

    A fractional quota rounds down: threads beyond it would be throttled, not run.
    """
    quota = cgroup_cpu_quota(cgroup_root)
    available = affinity_cpus()
    threads = available if quota is None else min(available, math.floor(quota))
    return max(1, threads)
