"""Modules as a JSON description plus named tensors, and back: how an artifact holds the engine.

`describe` walks a module tree and returns a JSON-ready description with the tensors it names;
`rebuild` makes the same tree again from them. Only the classes listed here can be named, and a
description holds only numbers, strings and names: unlike a pickle, nothing in it runs code.
"""

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from handler.musicgen.audio_decoder import (
    EncodecAudioDecoder,
    PaddedConv1d,
    ResidualBlock,
    SkipLSTM,
    TrimmedConvTranspose1d,
)
from handler.musicgen.decoder_layer import DecoderLayer
from handler.musicgen.kernel_linear import KernelLinear
from handler.musicgen.text_encoder import Block, FeedForward, NewGELU, RMSNorm, SelfAttention, T5TextEncoder
from handler.native.packing import Int4Linear, Int8Linear

Description = dict[str, Any]
Tensors = dict[str, torch.Tensor]


class ModuleTreeError(ValueError):
    """A description names a class or tensor it may not, or is malformed."""


def _linear_arguments(module: nn.Linear) -> dict[str, Any]:
    return {"in_features": module.in_features, "out_features": module.out_features, "bias": module.bias is not None}


def _norm_arguments(module: nn.LayerNorm) -> dict[str, Any]:
    return {
        "normalized_shape": list(module.normalized_shape),
        "eps": module.eps,
        "elementwise_affine": module.elementwise_affine,
        "bias": module.bias is not None,
    }


def _conv_arguments(module: nn.Conv1d | nn.ConvTranspose1d) -> dict[str, Any]:
    arguments = {
        "in_channels": module.in_channels,
        "out_channels": module.out_channels,
        "kernel_size": module.kernel_size[0],
        "stride": module.stride[0],
        "padding": module.padding[0] if isinstance(module.padding, tuple) else module.padding,
        "dilation": module.dilation[0],
        "groups": module.groups,
        "bias": module.bias is not None,
        "padding_mode": module.padding_mode,
    }
    if isinstance(module, nn.ConvTranspose1d):
        arguments["output_padding"] = module.output_padding[0]
    return arguments


def _lstm_arguments(module: nn.LSTM) -> dict[str, Any]:
    names = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional", "proj_size")
    return {name: getattr(module, name) for name in names}


def _embedding_arguments(module: nn.Embedding) -> dict[str, Any]:
    return {
        "num_embeddings": module.num_embeddings,
        "embedding_dim": module.embedding_dim,
        "padding_idx": module.padding_idx,
    }


def _no_arguments(module: nn.Module) -> dict[str, Any]:
    return {}


_TORCH_CLASSES: dict[str, tuple[type[nn.Module], Callable[[Any], dict[str, Any]]]] = {
    "Linear": (nn.Linear, _linear_arguments),
    "LayerNorm": (nn.LayerNorm, _norm_arguments),
    "Conv1d": (nn.Conv1d, _conv_arguments),
    "ConvTranspose1d": (nn.ConvTranspose1d, _conv_arguments),
    "LSTM": (nn.LSTM, _lstm_arguments),
    "Embedding": (nn.Embedding, _embedding_arguments),
    "ELU": (nn.ELU, lambda module: {"alpha": module.alpha}),
    "GELU": (nn.GELU, lambda module: {"approximate": module.approximate}),
    "ReLU": (nn.ReLU, _no_arguments),
    "Identity": (nn.Identity, _no_arguments),
}
"""torch's own modules: rebuilt by their constructors from the arguments, then given their tensors."""

_CONTAINERS: dict[str, type[nn.Module]] = {"Sequential": nn.Sequential, "ModuleList": nn.ModuleList}

_OUR_CLASSES: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        EncodecAudioDecoder,
        PaddedConv1d,
        TrimmedConvTranspose1d,
        SkipLSTM,
        ResidualBlock,
        T5TextEncoder,
        Block,
        SelfAttention,
        FeedForward,
        RMSNorm,
        NewGELU,
        Int8Linear,
        Int4Linear,
        KernelLinear,
        DecoderLayer,
    )
}
"""This project's modules: rebuilt from their plain attributes, children and tensors."""


def describe(module: nn.Module, prefix: str, tensors: Tensors) -> Description:
    """The description of `module`; its tensors are added to `tensors` under names starting with `prefix`."""
    type_name = _type_name(module)
    description: Description = {"type": type_name}
    if type_name in _TORCH_CLASSES:
        description["arguments"] = _TORCH_CLASSES[type_name][1](module)
        description["tensors"] = _describe_tensors(module.state_dict(keep_vars=True), prefix, tensors)
        return description
    if type_name in _OUR_CLASSES:
        description["attributes"] = {
            name: _encode(value, f"{type_name}.{name}")
            for name, value in vars(module).items()
            if not name.startswith("_") and name != "training"
        }
        own = {**module._parameters, **module._buffers}
        description["tensors"] = _describe_tensors(own, prefix, tensors)
        description["parameters"] = sorted(module._parameters)
    description["children"] = {
        name: None if child is None else describe(child, f"{prefix}{name}.", tensors)
        for name, child in module._modules.items()
    }
    return description


def rebuild(description: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    """The module `description` describes, holding `tensors` (not copied), in eval mode."""
    module = _rebuild(description, tensors)
    module.eval()
    return module


def _rebuild(description: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    if not isinstance(description, Mapping) or not isinstance(type_name := description.get("type"), str):
        raise ModuleTreeError("a module description must be an object with a type")
    module: nn.Module
    if type_name in _TORCH_CLASSES:
        module = _construct_on_meta(_TORCH_CLASSES[type_name][0], dict(description.get("arguments", {})))
        state = _take_tensors(description, tensors)
        module.load_state_dict(state, strict=True, assign=True)
        module.requires_grad_(False)
        return module
    if type_name in _CONTAINERS:
        module = _CONTAINERS[type_name]()
    elif type_name in _OUR_CLASSES:
        module = _OUR_CLASSES[type_name].__new__(_OUR_CLASSES[type_name])
        nn.Module.__init__(module)
        for name, value in dict(description.get("attributes", {})).items():
            setattr(module, name, _decode(value))
        parameters = set(description.get("parameters", []))
        for name, tensor in _take_tensors(description, tensors).items():
            if name in parameters:
                module.register_parameter(name, None if tensor is None else nn.Parameter(tensor, requires_grad=False))
            else:
                module.register_buffer(name, tensor)
    else:
        raise ModuleTreeError(f"module type {type_name!r} is not one an artifact may hold")
    for name, child in dict(description.get("children", {})).items():
        module.add_module(name, None if child is None else _rebuild(child, tensors))
    return module


def _construct_on_meta(cls: type[nn.Module], arguments: dict[str, Any]) -> nn.Module:
    with torch.device("meta"):
        if cls is nn.Embedding:
            # Given a weight, Embedding skips its random initialisation, which on meta tensors goes
            # through torch's reference ops and imports torch._dynamo: ~2 s of every start.
            shape = (arguments["num_embeddings"], arguments["embedding_dim"])
            return nn.Embedding(**arguments, _weight=torch.empty(shape))
        return cls(**arguments)


def _type_name(module: nn.Module) -> str:
    cls = type(module)
    name = cls.__name__
    known = {**{n: c for n, (c, _) in _TORCH_CLASSES.items()}, **_CONTAINERS, **_OUR_CLASSES}
    if known.get(name) is not cls:
        raise ModuleTreeError(f"module type {cls.__module__}.{name} cannot be saved in an artifact")
    return name


def _describe_tensors(named: Mapping[str, torch.Tensor | None], prefix: str, tensors: Tensors) -> dict[str, str | None]:
    names: dict[str, str | None] = {}
    for name, tensor in named.items():
        if "." in name:
            continue  # a child's, described with the child
        if tensor is None:
            names[name] = None
            continue
        key = f"{prefix}{name}"
        tensors[key] = tensor.detach()
        names[name] = key
    return names


def _take_tensors(description: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name, key in dict(description.get("tensors", {})).items():
        if key is None:
            state[name] = None
        elif key not in tensors:
            raise ModuleTreeError(f"tensor {key!r} is missing")
        else:
            state[name] = tensors[key]
    return state


_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in (torch.float32, torch.bfloat16, torch.float16)}


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.dtype) and str(value).removeprefix("torch.") in _DTYPES:
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, tuple):
        return {"tuple": [_encode(item, where) for item in value]}
    if isinstance(value, list):
        return [_encode(item, where) for item in value]
    raise ModuleTreeError(f"{where} is a {type(value).__name__}, which an artifact does not hold")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"dtype"} and value["dtype"] in _DTYPES:
            return _DTYPES[value["dtype"]]
        if set(value) == {"tuple"} and isinstance(value["tuple"], list):
            return tuple(_decode(item) for item in value["tuple"])
        raise ModuleTreeError(f"attribute value {value!r} is not one an artifact may hold")
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ModuleTreeError(f"attribute value {value!r} is not one an artifact may hold")
