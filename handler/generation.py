"""What one generation is asked to make, as the API, the job records and the engine all take it.

Torch-free, so the HTTP side imports it without loading the model's code. Inside the service the
description of the music is the `prompt`; only the HTTP request body (and a job's status, which
repeats that body) name it `text`, as the published contract does.
"""

import secrets
from dataclasses import dataclass

MAX_SEED = 2**32 - 1
"""Seeds are unsigned 32-bit, so any seed a response reports can be sent back."""

CONTRACT_MAX_DURATION = 30
"""The published contract's longest clip, in seconds: `MAX_DURATION`'s default."""
DURATION_CEILING = 300
"""The longest clip any deployment may allow (`MAX_DURATION`'s maximum), in seconds."""

MAX_TAKES = 4
"""Takes one request may ask for: decoded as one batch, eight rows with guidance, the native step's most."""


@dataclass(frozen=True)
class GenerationParams:
    """The prompt and how to sample it: the same parameters and seed give the same audio.
    `takes` clips are made of it at once, take `j` with seed `seed + j` (see `take_seed`)."""

    prompt: str
    duration: int
    guidance_scale: float
    temperature: float
    seed: int
    takes: int = 1

    @property
    def seeds(self) -> list[int]:
        """Each take's seed, in order."""
        return [take_seed(self.seed, take) for take in range(self.takes)]


def take_seed(seed: int, take: int) -> int:
    """The seed of take `take` (from 0) of a request seeded `seed`: the next ones, wrapping past
    `MAX_SEED`, so a take's seed sent back alone makes that take again."""
    return (seed + take) % (MAX_SEED + 1)


def random_seed() -> int:
    """A seed for a request that names none."""
    return secrets.randbelow(MAX_SEED + 1)
