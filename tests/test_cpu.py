"""What the process may use of the CPU: cgroup v1/v2 quotas and affinity, read from files the tests write."""

import os
import platform
from pathlib import Path

import pytest

from handler.cpu import cgroup_cpu_quota, cgroup_v1_quota, cgroup_v2_quota, cpu_flags, cpu_has_bf16, cpu_quota_threads


def cgroup_v2(root: Path, cpu_max: str) -> Path:
    """A cgroup v2 mount whose `cpu.max` reads `cpu_max`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(cpu_max + "\n")
    return root


def cgroup_v1(root: Path, quota_us: int, period_us: int = 100000) -> Path:
    """A cgroup v1 mount whose CPU controller has this CFS quota and period."""
    (root / "cpu").mkdir(parents=True, exist_ok=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period_us}\n")
    return root


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process may run on CPUs 0-7."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


@pytest.mark.parametrize(
    ("cpu_max", "quota"),
    [("max 100000", None), ("200000 100000", 2.0), ("150000 100000", 1.5), ("50000 100000", 0.5)],
)
def test_cgroup_v2_cpu_max(tmp_path: Path, cpu_max: str, quota: float | None) -> None:
    assert cgroup_v2_quota(cgroup_v2(tmp_path, cpu_max) / "cpu.max") == quota


@pytest.mark.parametrize("cpu_max", ["", "garbage", "100000", "100000 0"])
def test_unreadable_cgroup_v2_cpu_max_is_no_quota(tmp_path: Path, cpu_max: str) -> None:
    assert cgroup_v2_quota(cgroup_v2(tmp_path, cpu_max) / "cpu.max") is None
    assert cgroup_v2_quota(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("quota_us", "period_us", "quota"),
    [(-1, 100000, None), (400000, 100000, 4.0), (150000, 100000, 1.5), (50000, 50000, 1.0), (100000, 0, None)],
)
def test_cgroup_v1_cfs_quota_and_period(tmp_path: Path, quota_us: int, period_us: int, quota: float | None) -> None:
    cpu = cgroup_v1(tmp_path, quota_us, period_us) / "cpu"
    assert cgroup_v1_quota(cpu / "cpu.cfs_quota_us", cpu / "cpu.cfs_period_us") == quota


def test_cgroup_v2_is_read_first_and_v1_when_v2_sets_no_limit(tmp_path: Path) -> None:
    both = cgroup_v1(cgroup_v2(tmp_path / "both", "200000 100000"), 400000)
    assert cgroup_cpu_quota(both) == 2.0
    unlimited_v2 = cgroup_v1(cgroup_v2(tmp_path / "unlimited", "max 100000"), 400000)
    assert cgroup_cpu_quota(unlimited_v2) == 4.0
    assert cgroup_cpu_quota(cgroup_v1(tmp_path / "v1", -1)) is None
    assert cgroup_cpu_quota(tmp_path / "no-cgroup") is None


@pytest.mark.usefixtures("eight_cpus")
@pytest.mark.parametrize(
    ("cpu_max", "threads"),
    [("max 100000", 8), ("200000 100000", 2), ("150000 100000", 1), ("50000 100000", 1), ("1600000 100000", 8)],
)
def test_threads_are_the_whole_cpus_of_the_v2_quota_within_the_affinity(
    tmp_path: Path, cpu_max: str, threads: int
) -> None:
    assert cpu_quota_threads(cgroup_v2(tmp_path, cpu_max)) == threads


@pytest.mark.usefixtures("eight_cpus")
@pytest.mark.parametrize(("quota_us", "threads"), [(-1, 8), (300000, 3), (250000, 2), (1200000, 8)])
def test_threads_are_the_whole_cpus_of_the_v1_quota_within_the_affinity(
    tmp_path: Path, quota_us: int, threads: int
) -> None:
    assert cpu_quota_threads(cgroup_v1(tmp_path, quota_us)) == threads


def test_affinity_alone_limits_the_threads_without_a_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5, 7}, raising=False)
    assert cpu_quota_threads(tmp_path) == 3
    assert cpu_quota_threads(cgroup_v2(tmp_path, "400000 100000")) == 3


def test_without_affinity_the_machine_s_cpu_count_is_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert cpu_quota_threads(tmp_path) == 6
    assert cpu_quota_threads(cgroup_v1(tmp_path, 200000)) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert cpu_quota_threads(tmp_path / "none") == 1


def test_cpu_flags_name_this_cpus_instruction_sets() -> None:
    baseline = {"x86_64": "sse2", "aarch64": "fp"}[platform.machine()]  # every CPU of the architecture has it
    assert baseline in cpu_flags()


X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7R13 Processor
flags\t\t: fpu sse2 avx2 fma bmi2
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu sse2 avx2 fma bmi2
"""

ARM64_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8

processor\t: 1
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
"""


@pytest.mark.parametrize(
    ("cpuinfo", "present", "absent"),
    [
        (X86_CPUINFO, {"sse2", "avx2", "fma"}, {"asimddp", "sysret_ss_attrs"}),
        (ARM64_CPUINFO, {"fp", "asimd", "asimddp"}, {"avx2", "0x41"}),
    ],
    ids=["x86_64", "aarch64"],
)
def test_cpu_flags_read_x86_flags_and_arm64_features(
    tmp_path: Path, cpuinfo: str, present: set[str], absent: set[str]
) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    flags = cpu_flags(path)
    assert present <= flags
    assert not absent & flags


def test_unreadable_or_flagless_cpuinfo_is_no_flags(tmp_path: Path) -> None:
    assert cpu_flags(tmp_path / "missing") == frozenset()
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: something\n")
    assert cpu_flags(tmp_path / "cpuinfo") == frozenset()


BF16_FLAGS = frozenset({"avx2", "avx512f", "avx512_bf16"})


@pytest.mark.parametrize(
    ("flags", "environ", "native"),
    [
        (BF16_FLAGS, {}, True),
        (frozenset({"avx2", "amx_bf16"}), {}, True),
        (frozenset({"avx2", "avx512f", "avx512_vnni"}), {}, False),
        (BF16_FLAGS, {"ONEDNN_MAX_CPU_ISA": "avx2"}, False),
        (BF16_FLAGS, {"DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, False),
        (BF16_FLAGS, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True),
        (BF16_FLAGS, {"ONEDNN_MAX_CPU_ISA": "ALL"}, True),
        (BF16_FLAGS, {"ONEDNN_MAX_CPU_ISA": ""}, True),
    ],
)
def test_bf16_is_native_where_the_cpu_has_it_and_onednn_is_not_held_below_it(
    flags: frozenset[str], environ: dict[str, str], native: bool
) -> None:
    assert cpu_has_bf16(flags, environ) is native
