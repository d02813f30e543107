"""The C structs of `srm.h` as ctypes mirrors, and the load-time check that a library was compiled
with the same layouts and constants (`srm_abi`)."""

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass

Pointer = ctypes.c_void_p

ABI_VERSION = 1
"""SRM_ABI_VERSION in srm.h: the shape of `srm_abi_info`, read before anything else."""


class Linear(ctypes.Structure):
    """srm_linear: one packed Linear layer."""

    _fields_ = [
        ("weight", Pointer),
        ("scale", Pointer),
        ("row_sum", Pointer),
        ("group_scale", Pointer),
        ("bias", Pointer),
        ("n", ctypes.c_int64),
        ("k", ctypes.c_int64),
        ("in_features", ctypes.c_int64),
        ("out_features", ctypes.c_int64),
        ("bits", ctypes.c_int64),
    ]


class Layer(ctypes.Structure):
    """srm_layer: one decoder layer's weights, caches and cross-attention."""

    _fields_ = [
        *((name, Pointer) for name in ("ln1_weight", "ln1_bias", "ln2_weight", "ln2_bias", "ln3_weight", "ln3_bias")),
        *((name, Linear) for name in ("qkv", "out", "cross_q", "cross_out", "fc1", "fc2")),
        *((name, Pointer) for name in ("k_cache", "v_cache", "k_scale", "v_scale", "k_sum", "cross_k", "cross_v")),
        ("cross_keys", Linear),
        ("cross_values", Pointer),
        ("cross_value_scale", Pointer),
        ("cross_value_sum", Pointer),
    ]


class Decoder(ctypes.Structure):
    """srm_decoder: the whole step's shapes, layers and scratch."""

    _fields_ = [
        *(
            (name, ctypes.c_int64)
            for name in ("layers", "rows", "cond_rows", "hidden", "heads", "head_dim", "capacity", "cross_len")
        ),
        ("eps", ctypes.c_float),
        ("threads", ctypes.c_int32),
        ("layer", ctypes.POINTER(Layer)),
        ("final_ln_weight", Pointer),
        ("final_ln_bias", Pointer),
        ("head", Linear),
        ("cross_mask", Pointer),
        *(
            (name, Pointer)
            for name in (
                "normed",
                "quant",
                "row_scale",
                "quant_sum",
                "wide",
                "attn",
                "scores",
                "cross_weights",
                "cross_weight_scale",
                "logits",
            )
        ),
        ("in_stride", ctypes.c_int64),
        ("out_stride", ctypes.c_int64),
    ]


class Generation(ctypes.Structure):
    """srm_generation: what srm_generate needs beyond the decoder."""

    _fields_ = [
        ("embed", Pointer),
        ("positions", Pointer),
        *((name, ctypes.c_int64) for name in ("prompts", "codebooks", "vocab", "length")),
        ("guidance", ctypes.c_float),
        ("inv_temperature", ctypes.c_float),
        ("top_k", ctypes.c_int64),
        ("uniforms", Pointer),
        ("forced", Pointer),
        ("pad_token", ctypes.c_int64),
        ("sequence", Pointer),
        ("scratch", Pointer),
        ("picked", Pointer),
    ]


MIRRORS: Mapping[str, type[ctypes.Structure]] = {
    "srm_linear": Linear,
    "srm_layer": Layer,
    "srm_decoder": Decoder,
    "srm_generation": Generation,
}
"""Each C struct's mirror, by its C name; a mirror's fields carry the C fields' names."""


class _AbiField(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("offset", ctypes.c_int64), ("size", ctypes.c_int64)]


class _AbiConstant(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_int64)]


class _AbiInfo(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_int64),
        ("dots", ctypes.c_char_p),
        ("fields", ctypes.c_int64),
        ("field", ctypes.POINTER(_AbiField)),
        ("constants", ctypes.c_int64),
        ("constant", ctypes.POINTER(_AbiConstant)),
    ]


class AbiMismatchError(RuntimeError):
    """A library whose structs or constants differ from the Python side's: it must not be called."""


@dataclass(frozen=True)
class LibraryAbi:
    """What a library reports it was compiled with (`srm_abi`)."""

    library: str
    dots: str
    """The dot kernels compiled in: "plain", "avx2", "avxvnni", "avx512vnni", "neon", "neon_dotprod" or "neon_i8mm"."""
    layout: Mapping[str, tuple[int, int]]
    """(offset, size) by "struct" (offset 0, the struct's size) and "struct.field"."""
    constants: Mapping[str, int]


FUNCTIONS = ("srm_decoder_step", "srm_generate", "srm_linear_forward", "srm_lstm", "srm_elu", "srm_fold_quantize")
"""What the runtime calls besides `srm_abi`: a library built before one of them existed lacks it."""


def check_functions(library: ctypes.CDLL, name: str) -> None:
    """Refuse `library` (reported as `name`) if it lacks a function of `FUNCTIONS`."""
    missing = [function for function in FUNCTIONS if not hasattr(library, function)]
    if missing:
        lacking = ", ".join(missing)
        raise AbiMismatchError(f"{name} lacks {lacking}: built from older sources; rebuild it (make kernels)")


def read(library: ctypes.CDLL, name: str) -> LibraryAbi:
    """The layouts and constants `library` (reported as `name`) was compiled with."""
    try:
        srm_abi = library.srm_abi
    except AttributeError:
        raise AbiMismatchError(f"{name} has no srm_abi: built from older sources; rebuild it (make kernels)") from None
    srm_abi.restype = ctypes.POINTER(_AbiInfo)
    srm_abi.argtypes = []
    info = srm_abi().contents
    if info.version != ABI_VERSION:
        raise AbiMismatchError(f"{name} reports ABI version {info.version}, this code reads {ABI_VERSION}")
    fields = (info.field[i] for i in range(info.fields))
    constants = (info.constant[i] for i in range(info.constants))
    return LibraryAbi(
        library=name,
        dots=info.dots.decode(),
        layout={field.name.decode(): (field.offset, field.size) for field in fields},
        constants={constant.name.decode(): constant.value for constant in constants},
    )


def mirror_layout(mirrors: Mapping[str, type[ctypes.Structure]] = MIRRORS) -> dict[str, tuple[int, int]]:
    """(offset, size) by "struct" and "struct.field", as the ctypes `mirrors` lay them out."""
    layout = {}
    for struct, mirror in mirrors.items():
        layout[struct] = (0, ctypes.sizeof(mirror))
        for name, *_ in mirror._fields_:
            field = getattr(mirror, name)
            layout[f"{struct}.{name}"] = (field.offset, field.size)
    return layout


def check(
    reported: LibraryAbi,
    constants: Mapping[str, int],
    *,
    mirrors: Mapping[str, type[ctypes.Structure]] = MIRRORS,
    dots: str | None = None,
) -> None:
    """Raise `AbiMismatchError` naming each struct, field or constant where `reported` differs from
    `mirrors` and `constants` (or its dot kernels from `dots`, when given)."""
    expected = mirror_layout(mirrors)
    problems = []
    for name in [*reported.layout, *(name for name in expected if name not in reported.layout)]:
        if name not in reported.layout:
            problems.append(f"{name} is in the Python mirror {mirrors[name.split('.')[0]].__name__}, not in C")
        elif name not in expected:
            problems.append(f"{name} (offset {reported.layout[name][0]}) is in C, missing from the Python mirror")
        elif expected[name] != reported.layout[name]:
            (c_offset, c_size), (py_offset, py_size) = reported.layout[name], expected[name]
            problems.append(f"{name} is at offset {c_offset}, {c_size} bytes in C; {py_offset}, {py_size} in Python")
    for name, value in constants.items():
        if reported.constants.get(name) != value:
            problems.append(f"{name} is {reported.constants.get(name)} in C, {value} in Python")
    if dots is not None and reported.dots != dots:
        problems.append(f"its dot kernels are {reported.dots!r}, the build promises {dots!r}")
    if problems:
        raise AbiMismatchError(
            f"{reported.library} does not match the Python side (rebuild: make kernels; or mend "
            "handler/native/abi.py or packing.py to match srm.h): " + "; ".join(problems)
        )
