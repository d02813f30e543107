"""MusicGen's codebook delay pattern (mono): codebook k runs k steps behind the first."""

import torch


def delay_forced(num_codebooks: int, length: int) -> torch.Tensor:
    """(codebooks, length) bool: the positions the pattern forces to the pad token, as
    transformers' ``MusicgenForCausalLM.build_delay_pattern_mask`` does."""
    k = num_codebooks
    if length < 2 * k - 1:  # transformers returns the ids unchanged in this case
        return torch.zeros((k, length), dtype=torch.bool)
    ones = torch.ones((k, length), dtype=torch.bool)
    return torch.triu(ones, diagonal=length - k + 1) | torch.tril(ones)


def codes_from_sequence(sequence: torch.Tensor) -> torch.Tensor:
    """The delayed sequence (batch, codebooks, length), start token first, as aligned codes
    (1, batch, codebooks, frames) for EnCodec: frames = length - codebooks."""
    _, codebooks, length = sequence.shape
    frames = length - codebooks
    codes = torch.stack([sequence[:, k, k + 1 : k + 1 + frames] for k in range(codebooks)], dim=1)
    return codes.unsqueeze(0)
