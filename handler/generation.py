"""What one generation is asked to make, as the API, the job records and the engine all take it.

Torch-free, so the HTTP side imports it without loading the model's code. Inside the service the
description of the music is the `prompt`; only the HTTP request body (and a job's status, which
repeats that body) name it `text`, as the published contract does.
"""

import secrets
from dataclasses import dataclass

MAX_SEED = 2**32 - 1
"""Seeds are unsigned 32-bit, so any seed a response reports can be sent back."""


@dataclass(frozen=True)
class GenerationParams:
    """The prompt and how to sample it: the same parameters and seed give the same audio."""

    prompt: str
    duration: int
    guidance_scale: float
    temperature: float
    seed: int


def random_seed() -> int:
    """A seed for a request that names none."""
    return secrets.randbelow(MAX_SEED + 1)
