"""The arm64 builds (dots_neon.h with smmla, with sdot, with neither) against the plain-C reference
on the same inputs: cross-compiled with Debian's gcc-aarch64-linux-gnu and run under qemu-user-static
by a C driver (tests/native/arm64/driver.c: no torch under emulation). `make test` installs both
tools."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from handler.native import build
from handler.native.build import PLAIN, Variant

CROSS_COMPILER = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64-static"
SYSROOT = Path("/usr/aarch64-linux-gnu")
"""Where the cross toolchain keeps arm64's C library and libgomp: qemu's -L."""
DRIVER = Path(__file__).with_name("arm64") / "driver.c"
ARM64 = build.variants("aarch64")
TUNED = [variant for variant in ARM64 if variant != PLAIN]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: run `make test`, which installs gcc-aarch64-linux-gnu and qemu-user-static")
    return path


@pytest.fixture(scope="module")
def arm64_builds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every aarch64 build of the library and the driver, cross-compiled into one directory."""
    compiler, _ = tool(CROSS_COMPILER), tool(QEMU)
    directory = tmp_path_factory.mktemp("arm64")
    for variant in ARM64:
        # the cross toolchain's own OpenMP runtime: torch's is an x86 library
        for command in build.build_commands(variant, variant.path(directory), compiler, openmp=["-fopenmp"]):
            subprocess.run(command, check=True)
    driver = directory / "driver"
    warnings = ["-Wall", "-Wextra", "-Werror"]
    include = f"-I{build.SOURCE.parent}"
    subprocess.run([compiler, "-O2", *warnings, include, str(DRIVER), "-o", str(driver), "-ldl", "-lm"], check=True)
    return directory


def drive(arm64_builds: Path, variant: Variant, cpu: str) -> subprocess.CompletedProcess[str]:
    """The driver comparing `variant` with the plain build on qemu's model of `cpu`."""
    command = [
        tool(QEMU),
        "-L",
        str(SYSROOT),
        "-cpu",
        cpu,
        str(arm64_builds / "driver"),
        str(PLAIN.path(arm64_builds)),
        str(variant.path(arm64_builds)),
        variant.dots,
    ]
    # The OpenMP threads wait asleep, not spinning: the same threads and work, but a spin under
    # emulation costs many times a native one and starves the thread it waits for.
    environment = {**os.environ, "OMP_WAIT_POLICY": "passive"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)


def test_arm64_builds_its_neon_variants_best_first() -> None:
    assert [(v.name, v.dots) for v in TUNED] == [
        ("neon_i8mm", "neon_i8mm"),
        ("neon_dotprod", "neon_dotprod"),
        ("neon", "neon"),
    ]
    # /proc/cpuinfo's names (Linux's arm64 hwcap strings) for the int8 matrix multiply and dotprod
    assert [v.cpu_flags for v in TUNED] == [frozenset({"asimddp", "i8mm"}), frozenset({"asimddp"}), frozenset()]


@pytest.mark.parametrize("variant", TUNED, ids=[v.name for v in TUNED])
def test_neon_build_matches_the_plain_reference_under_qemu(arm64_builds: Path, variant: Variant) -> None:
    result = drive(arm64_builds, variant, "max")  # every extension qemu emulates, i8mm and dotprod included
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
    assert f"candidate {variant.path(arm64_builds)} ({variant.dots})" in result.stdout


def test_each_arm64_build_runs_on_the_cpus_its_flags_admit(arm64_builds: Path) -> None:
    """qemu's Neoverse N1 (Graviton2's core) has dotprod, not i8mm: the build the runtime falls back
    to there runs, and the i8mm build, which it must not pick, stops at its first smmla."""
    dotprod, i8mm = (next(v for v in TUNED if v.name == name) for name in ("neon_dotprod", "neon_i8mm"))
    result = drive(arm64_builds, dotprod, "neoverse-n1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
    result = drive(arm64_builds, i8mm, "neoverse-n1")
    assert result.returncode != 0
    assert "Illegal instruction" in result.stderr, result.stdout + result.stderr


def test_each_arm64_build_uses_its_own_instructions(arm64_builds: Path) -> None:
    """SRM_PLAIN keeps the reference plain though arm64's default target has NEON: no sdot in it.
    The i8mm build multiplies with smmla (and sdot for odd rows), the dotprod build with sdot only."""

    def instructions(variant: Variant) -> set[str]:
        objdump = shutil.which("aarch64-linux-gnu-objdump") or "aarch64-linux-gnu-objdump"
        command = [objdump, "-d", str(variant.path(arm64_builds))]
        listing = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        return {line.split("\t")[2].split()[0] for line in listing.splitlines() if line.count("\t") >= 2}

    used = {variant.name: instructions(variant) & {"sdot", "smmla"} for variant in ARM64}
    assert used == {"neon_i8mm": {"sdot", "smmla"}, "neon_dotprod": {"sdot"}, "neon": set(), "plain": set()}
