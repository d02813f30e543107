"""What the process may use of the CPU."""

import platform

from handler.cpu import cpu_flags, cpu_quota_threads


def test_thread_count_respects_the_cpus_this_process_may_use() -> None:
    import os

    threads = cpu_quota_threads()
    assert 1 <= threads <= len(os.sched_getaffinity(0))


def test_cpu_flags_name_this_cpus_instruction_sets() -> None:
    baseline = {"x86_64": "sse2", "aarch64": "fp"}[platform.machine()]  # every CPU of the architecture has it
    assert baseline in cpu_flags()
