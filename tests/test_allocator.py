"""handler.allocator: freed activations stay in the process, so the next layer's reuse them; the
step's streamed memory is on 2 MB pages."""

import gc
import mmap
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from handler.allocator import HUGE_PAGE, advise_huge_pages, huge_page_tensor

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


def transparent_huge_pages() -> str:
    """The kernel's THP mode (`always`, `madvise` or `never`): the bracketed word of its setting."""
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    return setting.split("[", 1)[1].split("]", 1)[0]


def mapping_of(address: int) -> dict[str, int]:
    """The kB fields of /proc/self/smaps for the mapping that holds `address`."""
    fields: dict[str, int] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(bound, 16) for bound in head.split("-"))
            inside = start <= address < end
        elif inside and line.endswith(" kB"):
            fields[head.rstrip(":")] = int(line.split()[1])
    return fields


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint16, torch.float32])
def test_a_huge_page_tensor_is_zeroed_aligned_to_2_mb_and_outlives_its_mapping_object(dtype: torch.dtype) -> None:
    tensor = huge_page_tensor(3 * 2**20 + 5, dtype)
    gc.collect()
    assert tensor.shape == (3 * 2**20 + 5,)
    assert tensor.dtype == dtype
    assert tensor.data_ptr() % HUGE_PAGE == 0
    assert not tensor.any()
    tensor.fill_(7)
    assert int(tensor.long().sum()) == 7 * tensor.numel()


def test_a_huge_page_tensor_is_backed_by_2_mb_pages_where_the_kernel_offers_them() -> None:
    tensor = huge_page_tensor(16 * 2**20, torch.int8)
    tensor.fill_(1)  # the pages exist once written
    huge_kb = mapping_of(tensor.data_ptr())["AnonHugePages"]
    if transparent_huge_pages() == "never":
        assert huge_kb == 0
    else:  # `always` or `madvise`: the mapping asked for them (a 2 MB page can be refused when
        # memory is fragmented, so at least one of its eight, not all)
        assert huge_kb >= HUGE_PAGE // 1024


class RefusingMapping:
    """A mapping whose kernel has no transparent huge pages: `madvise` fails as Linux's does."""

    def madvise(self, option: int) -> None:
        raise OSError(22, "Invalid argument")


def test_a_kernel_that_refuses_huge_pages_leaves_the_mapping_on_4_kb_pages() -> None:
    assert advise_huge_pages(RefusingMapping()) is False  # type: ignore[arg-type]
    with mmap.mmap(-1, HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as mapping:
        assert advise_huge_pages(mapping) is True
