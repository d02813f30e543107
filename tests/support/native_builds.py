"""The builds of the native library this CPU runs, and the one `auto` picks on another CPU."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from handler.cpu import cpu_flags
from handler.native import build, runtime
from handler.settings import AUTO

RUNNABLE = [variant for variant in build.variants() if runtime.runnable(variant)]
"""The builds this CPU runs, best first; the plain-C reference is always among them."""


def auto_build_on(cpuinfo: str, machine: str, directory: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The build `NATIVE_KERNELS=auto` picks on a `machine` whose /proc/cpuinfo reads `cpuinfo`:
    its builds can't all load here, so a stand-in loads each."""
    path = directory / "cpuinfo"
    path.write_text(cpuinfo)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: cpu_flags(path))
    monkeypatch.setattr(runtime, "variants", lambda: build.variants(machine))
    monkeypatch.setattr(runtime, "load", lambda variant, directory: SimpleNamespace(variant=variant))
    kernels = runtime.select(AUTO, directory)
    assert kernels is not None
    return kernels.variant.name
