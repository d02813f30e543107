"""Building the native library (`kernels.c` with `srm.h` and its `dots_*.h`): one build per instruction
set, compiled ahead of time (`python -m handler.native.build`, run by `make` and the image build)."""

import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernels.c")
"""The one translation unit: it includes srm.h and the build's dots_*.h, found beside it."""


@dataclass(frozen=True)
class Variant:
    """One build of the library: for the CPUs that have all of `cpu_flags`."""

    name: str
    flags: tuple[str, ...]
    cpu_flags: frozenset[str]
    dots: str = "plain"
    """The dot kernels `flags` select (dots_<dots>.h; dots_neon.h's sdot and smmla builds report
    "neon_dotprod" and "neon_i8mm"); the library reports them (see abi.check)."""

    def path(self, directory: Path = SOURCE.parent) -> Path:
        return directory / f"libsrm_kernels_{self.name}.so"


PLAIN = Variant("plain", ("-DSRM_PLAIN",), frozenset())
"""The plain-C reference (dots_plain.h, forced by SRM_PLAIN whatever vector units the compiler's
default target has: arm64's always has NEON) for any CPU the compiler targets by default: every
machine builds it, the fallback where no tuned build runs and what the tests check the others against."""

# Best first. The targets are portable baselines, not the build machine's own CPU: the image is
# built on one machine and runs on Lambda's (x86-64-v3 is AVX2 + FMA, on every Lambda x86 CPU).
_TUNED = {
    "x86_64": (
        Variant(
            "avx512vnni",
            ("-march=x86-64-v4", "-mavx512vnni"),
            frozenset({"avx512bw", "avx512_vnni"}),
            "avx512vnni",
        ),
        Variant("avxvnni", ("-march=x86-64-v3", "-mavxvnni"), frozenset({"avx2", "fma", "avx_vnni"}), "avxvnni"),
        Variant("avx2", ("-march=x86-64-v3",), frozenset({"avx2", "fma"}), "avx2"),
    ),
    # dots_neon.h: smmla for pairs of rows with the int8 matrix multiply (Graviton3 and later; it
    # keeps sdot for the rest), sdot with ARMv8.2's dot-product extension (Graviton2 and later), else
    # NEON's widening multiplies (every ARMv8 CPU).
    "aarch64": (
        Variant("neon_i8mm", ("-march=armv8.2-a+dotprod+i8mm",), frozenset({"asimddp", "i8mm"}), "neon_i8mm"),
        Variant("neon_dotprod", ("-march=armv8.2-a+dotprod",), frozenset({"asimddp"}), "neon_dotprod"),
        Variant("neon", ("-march=armv8-a",), frozenset(), "neon"),
    ),
}


def variants(machine: str | None = None) -> tuple[Variant, ...]:
    """The builds made for `machine` (default: this one), best first; the plain-C reference last."""
    return (*_TUNED.get(machine or platform.machine(), ()), PLAIN)


def openmp_runtime() -> Path | None:
    """torch's own OpenMP runtime, where its wheel bundles one: the library links to that file."""
    bundled = sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*"))
    return bundled[0] if bundled else None


COMMON_FLAGS = ("-fopenmp", "-fPIC", "-fno-trapping-math")
"""Every build's. Without -fno-trapping-math gcc won't turn the clamps and sign choices of exp and
GELU into vector selects (they could raise floating-point exceptions nothing here reads), and
leaves softmax and GELU scalar."""


def build_commands(
    variant: Variant, output: Path, compiler: str = "cc", openmp: Sequence[str] | None = None
) -> list[list[str]]:
    """Compile, then link. Linking to torch's OpenMP runtime (not the system's) makes the kernels
    share torch's thread pool; two runtimes would each keep threads spinning on the same cores.
    `openmp`: what the link names instead (e.g. `-fopenmp`, a cross-compiler's own runtime)."""
    obj = output.with_suffix(".o")
    if openmp is None:
        runtime = openmp_runtime()
        openmp = [str(runtime)] if runtime else ["-fopenmp"]
    return [
        [compiler, "-O3", *variant.flags, *COMMON_FLAGS, "-c", str(SOURCE), "-o", str(obj)],
        [compiler, "-shared", str(obj), "-o", str(output), *openmp, "-lm"],
    ]


def build(selected: Sequence[Variant] | None = None, directory: Path = SOURCE.parent) -> list[Path]:
    """Compile each variant into `directory`, replacing a library only once its build has succeeded."""
    built = []
    directory.mkdir(parents=True, exist_ok=True)
    for variant in selected or variants():
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            partial = Path(scratch) / "kernels.so"
            for command in build_commands(variant, partial, os.environ.get("CC", "cc")):
                subprocess.run(command, check=True)
            partial.chmod(0o755)  # Lambda runs the image as another user
            os.replace(partial, variant.path(directory))
        built.append(variant.path(directory))
    return built


if __name__ == "__main__":
    for path in build(directory=Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE.parent):
        print(path)
