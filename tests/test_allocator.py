"""handler.allocator: freed activations stay in the process, so the next layer's reuse them."""

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

REUSE = textwrap.dedent(
    """
    import resource
    import torch
    from handler.allocator import keep_freed_memory

    print(keep_freed_memory())
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    larger = torch.ones(24 * 2**20 // 4)  # 24 MB
    del larger
    before = faults()
    smaller = torch.ones(9 * 2**20 // 4)  # 9 MB: 2304 pages, if they were new
    print(faults() - before)
    """
)


def test_a_freed_block_is_reused_without_new_page_faults() -> None:
    assert platform.libc_ver()[0] == "glibc"
    done = subprocess.run([sys.executable, "-c", REUSE], cwd=ROOT, capture_output=True, text=True, check=True)
    took, faults = done.stdout.split()
    assert took == "True"
    assert int(faults) < 100
