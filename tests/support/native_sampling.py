"""The native sampler on its own (`srm_sample`, its test entry): production samples inside
`srm_generate`, so only the tests call it."""

import ctypes

import torch

from handler.native.abi import Decoder, Generation, Linear, Pointer
from handler.native.runtime import NativeKernels, inverse_temperature


def sample(
    kernels: NativeKernels,
    logits: torch.Tensor,
    guidance: float | None,
    temperature: float,
    top_k: int,
    uniforms: torch.Tensor,
) -> torch.Tensor:
    """The tokens (prompts, codebooks) `generate` picks from one step's logits (rows, codebooks,
    vocab), with guidance (None: no unconditional rows) and one uniform per token."""
    srm_sample = kernels.library.srm_sample
    srm_sample.restype = None
    srm_sample.argtypes = [ctypes.POINTER(Decoder), ctypes.POINTER(Generation), Pointer]
    rows, codebooks, vocab = (int(size) for size in logits.shape)
    prompts = rows // 2 if guidance is not None else rows
    flat = logits.float().reshape(rows, codebooks * vocab).contiguous()
    picked = torch.empty((prompts, codebooks), dtype=torch.long)
    scratch = torch.empty((prompts * codebooks, 3 * vocab))
    holder = Decoder(rows=rows, logits=flat.data_ptr(), head=Linear(n=codebooks * vocab))
    sampling = Generation(
        prompts=prompts,
        codebooks=codebooks,
        vocab=vocab,
        guidance=1.0 if guidance is None else guidance,
        inv_temperature=inverse_temperature(temperature),
        top_k=top_k,
        scratch=scratch.data_ptr(),
        picked=picked.data_ptr(),
    )
    draws = uniforms.float().contiguous()
    srm_sample(ctypes.byref(holder), ctypes.byref(sampling), draws.data_ptr())
    return picked
