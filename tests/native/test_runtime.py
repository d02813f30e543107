"""Loading the native library: which build a CPU gets, and the checks `NativeRun` makes of what it
is given."""

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from handler.native import build, packing, runtime
from handler.native.build import PLAIN
from handler.native.packing import FoldedCrossAttention, Int8Linear
from handler.native.runtime import KernelSelectionError, NativeKernels, NativeRun
from handler.settings import Settings
from tests.support.native_builds import RUNNABLE, auto_build_on
from tests.support.native_layers import fold, folded_rows, random_layer, without_cross_biases


def test_best_loads_the_first_build_this_cpu_runs(build_directory: Path) -> None:
    kernels = runtime.best(build_directory)
    assert kernels is not None
    assert kernels.variant == next(v for v in build.variants() if runtime.runnable(v))
    assert runtime.best(build_directory) is kernels  # loaded once per process


def test_without_the_instructions_for_a_tuned_build_the_plain_reference_is_loaded(
    build_directory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", frozenset)
    assert [v for v in build.variants() if runtime.runnable(v)] == [PLAIN]
    shutil.copytree(build_directory, tmp_path, dirs_exist_ok=True)
    kernels = runtime.best(tmp_path)
    assert kernels is not None
    assert kernels.variant == PLAIN


GRAVITON2_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"
)
GRAVITON3_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3"
    " sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16"
    " dgh rng"
)
"""/proc/cpuinfo's Features on Graviton2 (Neoverse N1: dotprod, no i8mm) and Graviton3 (Neoverse V1)."""


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (GRAVITON3_FEATURES, "neon_i8mm"),
        (GRAVITON2_FEATURES, "neon_dotprod"),
        ("fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid", "neon"),  # Graviton1 (Cortex-A72)
    ],
    ids=["graviton3", "graviton2", "graviton1"],
)
def test_auto_on_arm64_picks_the_best_build_its_features_admit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, features: str, expected: str
) -> None:
    """The arm64 builds' selection, from an arm64 /proc/cpuinfo through cpu_flags (qemu runs the
    builds themselves: test_arm64.py)."""
    cpuinfo = f"processor\t: 0\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
    assert auto_build_on(cpuinfo, "aarch64", tmp_path, monkeypatch) == expected


X86_BASE_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt"
"""What every x86-64 CPU this serves on reports before its vector extensions."""


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("avx2 fma avx512f avx512bw avx512_vnni avx_vnni amx_int8", "avx512vnni"),  # Sapphire Rapids, Zen 5
        ("avx2 fma avx512f avx512bw avx512_vnni", "avx512vnni"),  # Cascade Lake, Zen 4
        ("avx2 fma avx_vnni", "avxvnni"),  # Alder Lake and later without AVX-512, Sierra Forest
        ("avx2 fma", "avx2"),  # Zen 2 and 3, Haswell to Comet Lake
        ("avx", "plain"),
    ],
    ids=["avx512-and-avx-vnni", "avx512-vnni", "avx-vnni", "avx2", "avx"],
)
def test_auto_on_x86_picks_the_best_build_its_flags_admit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str, expected: str
) -> None:
    """The x86 builds' selection from an x86 /proc/cpuinfo, whatever this CPU runs."""
    cpuinfo = f"processor\t: 0\nflags\t\t: {X86_BASE_FLAGS} {flags}\n"
    assert auto_build_on(cpuinfo, "x86_64", tmp_path, monkeypatch) == expected


def test_a_tuned_build_not_built_gives_way_to_the_next(build_directory: Path, tmp_path: Path) -> None:
    shutil.copy(PLAIN.path(build_directory), PLAIN.path(tmp_path))
    kernels = runtime.best(tmp_path)
    assert kernels is not None
    assert kernels.variant == PLAIN


def test_nothing_built_is_none(tmp_path: Path) -> None:
    assert runtime.load(PLAIN, tmp_path) is None
    assert runtime.best(tmp_path) is None


def test_folded_cross_attention_is_for_one_prompt(reference: NativeKernels) -> None:
    layer = without_cross_biases(random_layer(64, 128), Int8Linear)
    keys, values = torch.randn(2, 4, 3, 16), torch.randn(2, 4, 3, 16)
    with pytest.raises(ValueError, match="one prompt"):
        NativeRun(
            reference, [layer], nn.LayerNorm(64), Int8Linear(torch.randn(8, 64), None), heads=4,
            rows=4, cond_rows=2, capacity=4, cross_k=[keys], cross_v=[values], cross_mask=None,
            folded_cross=[fold(layer, keys[:1], values[:1], 4)],
        )  # fmt: skip


FOLD_SHAPES = {"musicgen": (16, 14, 64), "ragged": (2, 5, 12), "long-text": (3, 41, 32)}
"""(heads, text length, head dim): musicgen-small's with a 14-token prompt; a text that is not whole
groups of 4 and a width (24) that is neither whole blocks of 64 nor tiles of 32; a longer text."""


@pytest.mark.parametrize("shape", FOLD_SHAPES.values(), ids=FOLD_SHAPES.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernels_fold_is_the_torch_fold_bit_for_bit(
    kernels: NativeKernels, shape: tuple[int, int, int], dtype: torch.dtype
) -> None:
    torch.manual_seed(3)
    heads, length, head_dim = shape
    keys, values = torch.randn(heads, length, head_dim), torch.randn(heads, length, head_dim)
    query, output = (torch.randn(heads, head_dim, heads * head_dim).to(dtype) for _ in range(2))
    expected = FoldedCrossAttention.fold(keys, values, query, output)
    folded = kernels.fold_cross_attention(keys, values, query, output)
    assert folded.keys.padded_shape == expected.keys.padded_shape
    assert folded.keys.out_features == expected.keys.out_features
    assert folded.keys.in_features == expected.keys.in_features
    for name in ("weight", "scale", "row_sum"):
        assert torch.equal(getattr(folded.keys, name), getattr(expected.keys, name)), name
    for name in ("values", "value_scale", "value_sum"):
        assert torch.equal(getattr(folded, name), getattr(expected, name)), name


def test_a_folded_row_that_is_not_finite_is_zeros_with_a_nan_scale(kernels: NativeKernels) -> None:
    torch.manual_seed(4)
    heads, length, head_dim = 2, 5, 16
    keys, values = torch.randn(heads, length, head_dim), torch.randn(heads, length, head_dim)
    query, output = torch.randn(heads, head_dim, heads * head_dim), torch.randn(heads, head_dim, heads * head_dim)
    finite = kernels.fold_cross_attention(keys, values, query, output)
    keys[1, 2, 0], values[0, 3, 5] = float("inf"), float("nan")  # rows 1 * 5 + 2 and 3
    folded = kernels.fold_cross_attention(keys, values, query, output)
    for index, (rows, finite_rows, scale, finite_scale, bad) in enumerate(
        zip(folded_rows(folded), folded_rows(finite), (folded.keys.scale, folded.value_scale),
            (finite.keys.scale, finite.value_scale), (7, 3), strict=True)
    ):  # fmt: skip
        others = torch.arange(heads * length) != bad
        assert torch.all(rows[bad] == 0), index
        assert torch.isnan(scale[bad]), index
        assert torch.equal(rows[others], finite_rows[others]), index
        assert torch.equal(scale[: heads * length][others], finite_scale[: heads * length][others]), index


def test_too_many_rows_are_refused(reference: NativeKernels) -> None:
    layer = random_layer(64, 128)
    with pytest.raises(ValueError, match="rows"):
        NativeRun(
            reference, [layer], nn.LayerNorm(64), Int8Linear(torch.randn(8, 64), None), heads=4,
            rows=packing.MAX_ROWS + 1, cond_rows=1, capacity=4,
            cross_k=[torch.zeros(1, 4, 2, 16)], cross_v=[torch.zeros(1, 4, 2, 16)], cross_mask=None,
        )  # fmt: skip


@pytest.mark.parametrize("head_dim", [packing.MAX_HEAD_DIM + 4, 6])
def test_heads_the_cache_layout_cannot_hold_are_refused(reference: NativeKernels, head_dim: int) -> None:
    layer = random_layer(head_dim, 64)
    with pytest.raises(ValueError, match="multiple of 4 dimensions"):
        NativeRun(
            reference, [layer], nn.LayerNorm(head_dim), Int8Linear(torch.randn(8, head_dim), None), heads=1,
            rows=2, cond_rows=1, capacity=4,
            cross_k=[torch.zeros(1, 1, 2, head_dim)], cross_v=[torch.zeros(1, 1, 2, head_dim)], cross_mask=None,
        )  # fmt: skip


@pytest.mark.parametrize("name", [variant.name for variant in RUNNABLE])
def test_native_kernels_names_the_build_that_serves(
    build_directory: Path, forced_kernels: Callable[[str], None], name: str
) -> None:
    forced_kernels(name)
    kernels = runtime.best(build_directory)
    assert kernels is not None
    assert kernels.variant.name == name


def test_a_build_unknown_here_is_an_error_not_another_build(
    build_directory: Path, forced_kernels: Callable[[str], None]
) -> None:
    forced_kernels("sve2")
    with pytest.raises(KernelSelectionError, match="this machine's builds are"):
        runtime.best(build_directory)


def test_a_build_this_cpu_cannot_run_is_an_error(
    build_directory: Path, tmp_path: Path, forced_kernels: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    tuned = next(variant for variant in build.variants() if variant.cpu_flags)
    shutil.copytree(build_directory, tmp_path, dirs_exist_ok=True)  # not the directory loaded before
    monkeypatch.setattr(runtime, "cpu_flags", frozenset)
    forced_kernels(tuned.name)
    with pytest.raises(KernelSelectionError, match="this CPU lacks"):
        runtime.best(tmp_path)


def test_a_build_not_built_is_an_error(tmp_path: Path, forced_kernels: Callable[[str], None]) -> None:
    forced_kernels(PLAIN.name)
    with pytest.raises(KernelSelectionError, match="not built"):
        runtime.best(tmp_path)


@pytest.mark.parametrize("value", ["AVX2", "avx2; rm -rf /", ""])
def test_native_kernels_takes_only_a_build_name(value: str) -> None:
    with pytest.raises(ValidationError):
        Settings(native_kernels=value)
