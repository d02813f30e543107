"""The arm64 builds (dots_neon.h, with and without sdot) against the plain-C reference on the same
inputs: cross-compiled with Debian's gcc-aarch64-linux-gnu and run under qemu-user-static by a C
driver (tests/native/arm64/driver.c: no torch under emulation). `make test` installs both tools."""

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


def test_arm64_builds_its_neon_variants_best_first() -> None:
    assert [(v.name, v.dots) for v in TUNED] == [("neon_dotprod", "neon_dotprod"), ("neon", "neon")]
    assert TUNED[0].cpu_flags == frozenset({"asimddp"})  # /proc/cpuinfo's name for the dotprod extension


@pytest.mark.parametrize("variant", TUNED, ids=[v.name for v in TUNED])
def test_neon_build_matches_the_plain_reference_under_qemu(arm64_builds: Path, variant: Variant) -> None:
    command = [
        tool(QEMU),
        "-L",
        str(SYSROOT),
        "-cpu",
        "max",  # every extension qemu emulates, dotprod included
        str(arm64_builds / "driver"),
        str(PLAIN.path(arm64_builds)),
        str(variant.path(arm64_builds)),
        variant.dots,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
    assert f"candidate {variant.path(arm64_builds)} ({variant.dots})" in result.stdout


def test_the_plain_arm64_build_uses_the_plain_dots(arm64_builds: Path) -> None:
    """SRM_PLAIN keeps the reference plain though arm64's default target has NEON: no sdot in it,
    while the dotprod build has."""

    def disassembly(variant: Variant) -> str:
        objdump = shutil.which("aarch64-linux-gnu-objdump") or "aarch64-linux-gnu-objdump"
        command = [objdump, "-d", str(variant.path(arm64_builds))]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    assert "sdot" not in disassembly(PLAIN)
    assert "sdot" in disassembly(TUNED[0])
