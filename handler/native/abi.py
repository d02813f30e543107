"""The C structs of `kernels.c` as ctypes mirrors."""

import ctypes

Pointer = ctypes.c_void_p


class Linear(ctypes.Structure):
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
    _fields_ = [
        *((name, Pointer) for name in ("ln1_w", "ln1_b", "ln2_w", "ln2_b", "ln3_w", "ln3_b")),
        *((name, Linear) for name in ("qkv", "out", "cross_q", "cross_out", "fc1", "fc2")),
        *((name, Pointer) for name in ("k_cache", "v_cache", "k_scale", "v_scale", "k_sum", "cross_k", "cross_v")),
        ("cross_keys", Linear),
        ("cross_values", Pointer),
        ("cross_value_scale", Pointer),
    ]


class Decoder(ctypes.Structure):
    _fields_ = [
        *(
            (name, ctypes.c_int64)
            for name in ("layers", "rows", "cond_rows", "hidden", "heads", "head_dim", "capacity", "cross_len")
        ),
        ("eps", ctypes.c_float),
        ("threads", ctypes.c_int32),
        ("layer", ctypes.POINTER(Layer)),
        ("final_ln_w", Pointer),
        ("final_ln_b", Pointer),
        ("head", Linear),
        ("cross_mask", Pointer),
        *(
            (name, Pointer)
            for name in ("normed", "quant", "row_scale", "quant_sum", "wide", "attn", "scores", "logits")
        ),
        ("in_stride", ctypes.c_int64),
        ("out_stride", ctypes.c_int64),
    ]


class Generation(ctypes.Structure):
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
