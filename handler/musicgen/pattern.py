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


def sequence_from_codes(codes: torch.Tensor, length: int, start_token: int, pad_token: int) -> torch.Tensor:
    """Aligned codes (batch, codebooks, frames) in the delayed layout of a sequence `length` long:
    the start token first, frame f of codebook k at position f + k + 1, pad everywhere else.
    The inverse of `codes_from_sequence` where `length` is frames + codebooks."""
    batch, codebooks, frames = codes.shape
    sequence = torch.full((batch, codebooks, length), pad_token, dtype=torch.long)
    sequence[:, :, 0] = start_token
    for k in range(codebooks):
        sequence[:, k, k + 1 : k + 1 + frames] = codes[:, k]
    return sequence


def given_positions(num_codebooks: int, frames: int, length: int) -> torch.Tensor:
    """(codebooks, length) bool: where `sequence_from_codes` put the codes of `frames` frames."""
    given = torch.zeros((num_codebooks, length), dtype=torch.bool)
    for k in range(num_codebooks):
        given[k, k + 1 : k + 1 + frames] = True
    return given
