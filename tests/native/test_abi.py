"""The load-time check that a library was compiled with the Python side's struct layouts and
constants: every build passes it; a mirror or constant that differs is refused by name."""

import ctypes
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from handler.native import abi, build, packing, runtime
from handler.native.abi import MIRRORS, AbiMismatchError, Decoder, Linear, Pointer
from handler.native.build import PLAIN
from handler.native.packing import C_CONSTANTS

BUILT = [variant for variant in build.variants() if runtime.runnable(variant)]


def reported(directory: Path, variant: build.Variant = PLAIN) -> abi.LibraryAbi:
    path = variant.path(directory)
    return abi.read(ctypes.CDLL(str(path)), str(path))


def with_fields(name: str, fields: Sequence[tuple[Any, ...]]) -> type[ctypes.Structure]:
    """A ctypes Structure called `name` with `fields`."""
    return type(name, (ctypes.Structure,), {"_fields_": list(fields)})


@pytest.mark.parametrize("variant", BUILT, ids=lambda variant: variant.name)
def test_every_build_has_the_mirrors_layouts_and_the_packing_constants(
    build_directory: Path, variant: build.Variant
) -> None:
    library = reported(build_directory, variant)
    abi.check(library, C_CONSTANTS, dots=variant.dots)
    assert library.layout == abi.mirror_layout()
    assert {name: library.constants[name] for name in C_CONSTANTS} == C_CONSTANTS
    assert library.dots == variant.dots
    # vpdpbusd takes one operand unsigned, so the VNNI builds shift the query by +128
    assert library.constants["SRM_QUERY_SHIFT"] == (128 if variant.dots in ("avx512vnni", "avxvnni") else 0)


def test_every_field_of_every_struct_is_reported(build_directory: Path) -> None:
    layout = reported(build_directory).layout
    for struct, mirror in MIRRORS.items():
        assert layout[struct] == (0, ctypes.sizeof(mirror))
        for name, *_ in mirror._fields_:
            assert f"{struct}.{name}" in layout
    assert len(layout) == len(MIRRORS) + sum(len(mirror._fields_) for mirror in MIRRORS.values())


def test_a_mirror_missing_a_field_is_refused_naming_it(build_directory: Path) -> None:
    missing = with_fields("Linear", [field for field in Linear._fields_ if field[0] != "bias"])
    with pytest.raises(AbiMismatchError, match=r"srm_linear\.bias .*missing from the Python mirror"):
        abi.check(reported(build_directory), C_CONSTANTS, mirrors={**MIRRORS, "srm_linear": missing})


def test_a_mirror_with_fields_in_another_order_is_refused_naming_them(build_directory: Path) -> None:
    fields = list(Linear._fields_)
    fields[1], fields[2] = fields[2], fields[1]  # scale, row_sum
    swapped = with_fields("Linear", fields)
    with pytest.raises(AbiMismatchError, match=r"srm_linear\.scale is at offset 8") as refused:
        abi.check(reported(build_directory), C_CONSTANTS, mirrors={**MIRRORS, "srm_linear": swapped})
    assert "srm_linear.row_sum is at offset 16" in str(refused.value)
    assert "srm_linear.weight" not in str(refused.value)


def test_a_mirror_field_of_another_size_is_refused_naming_it(build_directory: Path) -> None:
    wide = with_fields("Decoder", [(n, ctypes.c_int64 if n == "threads" else t) for n, t, *_ in Decoder._fields_])
    with pytest.raises(AbiMismatchError, match=r"srm_decoder\.threads is at offset 68, 4 bytes in C; 72, 8 in Python"):
        abi.check(reported(build_directory), C_CONSTANTS, mirrors={**MIRRORS, "srm_decoder": wide})


def test_a_mirror_field_c_does_not_have_is_refused_naming_it(build_directory: Path) -> None:
    extra = with_fields("Linear", [*Linear._fields_, ("spare", Pointer)])
    with pytest.raises(AbiMismatchError, match=r"srm_linear\.spare is in the Python mirror Linear, not in C"):
        abi.check(reported(build_directory), C_CONSTANTS, mirrors={**MIRRORS, "srm_linear": extra})


def test_a_constant_mismatch_is_refused_naming_it(build_directory: Path) -> None:
    with pytest.raises(AbiMismatchError, match="SRM_KEY_TILE is 32 in C, 16 in Python"):
        abi.check(reported(build_directory), {**C_CONSTANTS, "SRM_KEY_TILE": 16})


def test_a_library_with_other_dot_kernels_than_its_variant_promises_is_refused(build_directory: Path) -> None:
    with pytest.raises(AbiMismatchError, match="dot kernels are 'plain', the build promises 'avx2'"):
        abi.check(reported(build_directory), C_CONSTANTS, dots="avx2")


def test_another_abi_version_is_refused(build_directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(abi, "ABI_VERSION", abi.ABI_VERSION + 1)
    with pytest.raises(AbiMismatchError, match="reports ABI version"):
        reported(build_directory)


def test_a_library_built_before_the_check_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "old.c"
    source.write_text("void srm_decoder_step(void) {}\n")
    subprocess.run(["cc", "-shared", "-fPIC", str(source), "-o", str(PLAIN.path(tmp_path))], check=True)
    with pytest.raises(AbiMismatchError, match="has no srm_abi"):
        runtime.load(PLAIN, tmp_path)


def test_a_library_built_before_a_function_existed_is_refused_naming_it(tmp_path: Path) -> None:
    # the current sources with srm_elu renamed: the structs and constants match, the function is gone
    output = PLAIN.path(tmp_path)
    commands = build.build_commands(PLAIN, output)
    commands[0] = [*commands[0][:1], "-O0", "-Dsrm_elu=srm_elu_not_yet", *commands[0][2:]]
    for command in commands:
        subprocess.run(command, check=True)
    with pytest.raises(AbiMismatchError, match="lacks srm_elu: built from older sources"):
        runtime.load(PLAIN, tmp_path)


def test_the_runtime_refuses_a_mismatched_library_rather_than_fall_back(
    build_directory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(packing.C_CONSTANTS, "SRM_MAX_ROWS", 16)
    with pytest.raises(AbiMismatchError, match="SRM_MAX_ROWS"):
        runtime.load(PLAIN, build_directory)
    # a fresh directory: best() is cached per directory
    for variant in BUILT:
        (tmp_path / variant.path().name).symlink_to(variant.path(build_directory))
    with pytest.raises(AbiMismatchError, match=BUILT[0].path().name):
        runtime.best(tmp_path)
