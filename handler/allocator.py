"""glibc's malloc, tuned for each phase: loading returns what it frees, serving keeps it."""

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 2**20
"""glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems."""


def keep_freed_memory(trim_threshold: int = 2**30) -> bool:
    """Serve blocks up to 32 MB from the heap and keep up to `trim_threshold` bytes of it once freed.

    EnCodec allocates and frees activations of several MB per layer; by default glibc maps and
    unmaps many of them, so each layer paid fresh page faults (about an eighth of a 10 s clip's
    decode). Returns False where the C library is not glibc (no `mallopt`) or refuses the values.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


def return_freed_memory(threshold: int = 256 * 2**10) -> bool:
    """Serve blocks from `threshold` bytes up from their own mappings, unmapped when freed.

    For loading and converting a model, which frees as much as it keeps. On the engine thread
    glibc allocates from a per-thread arena, and with its default (adaptive) thresholds the
    blocks freed there stayed in the process: a first start peaked ~0.8 GB higher than the same
    conversion on the main thread. `keep_freed_memory` sets serving's thresholds afterwards.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim(0)
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
