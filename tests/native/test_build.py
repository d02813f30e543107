"""Building the native library: every variant, replaced only after a successful build, linked to
torch's OpenMP runtime."""

import subprocess
from pathlib import Path

import pytest

from handler.native import build, runtime
from handler.native.build import PLAIN
from handler.native.runtime import NativeKernels


def test_every_runnable_variant_builds_and_loads(builds: dict[str, NativeKernels]) -> None:
    expected = {v.name for v in build.variants() if runtime.runnable(v)}
    assert set(builds) == expected
    assert "plain" in builds


@pytest.mark.parametrize(
    ("machine", "names"),
    [
        ("x86_64", ["avx512vnni", "avxvnni", "avx2", "plain"]),
        ("aarch64", ["neon_i8mm", "neon_dotprod", "neon", "plain"]),
        ("riscv64", ["plain"]),
    ],
)
def test_every_machine_builds_its_tuned_variants_then_the_plain_reference(machine: str, names: list[str]) -> None:
    variants = build.variants(machine)
    assert [v.name for v in variants] == names
    assert variants[-1] == PLAIN
    assert PLAIN.flags == ("-DSRM_PLAIN",)  # dots_plain.h whatever the compiler's default target
    assert PLAIN.cpu_flags == frozenset()
    assert PLAIN.dots == "plain"


def test_the_library_links_to_torchs_openmp_runtime(build_directory: Path) -> None:
    runtime = build.openmp_runtime()
    if runtime is None:
        pytest.fail("this torch wheel bundles no OpenMP runtime; the check below would not apply")
    path = PLAIN.path(build_directory)
    needed = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    soname = subprocess.run(["readelf", "-d", str(runtime)], capture_output=True, text=True, check=True).stdout
    runtime_name = soname.split("Library soname: [", 1)[1].split("]", 1)[0]
    assert f"Shared library: [{runtime_name}]" in needed
    assert needed.count("libgomp") == 1


def test_build_creates_its_output_directory(tmp_path: Path) -> None:
    (path,) = build.build([PLAIN], tmp_path / "opt" / "kernels")
    assert path.parent == tmp_path / "opt" / "kernels"
    assert path.stat().st_mode & 0o777 == 0o755
    assert runtime.load(PLAIN, path.parent) is not None


def test_a_failed_build_leaves_the_previous_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (path,) = build.build([PLAIN], tmp_path)
    before = path.read_bytes()
    monkeypatch.setenv("CC", "false")
    with pytest.raises(subprocess.CalledProcessError):
        build.build([PLAIN], tmp_path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
