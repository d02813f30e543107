"""Every build of the native library this CPU runs, compiled once per session."""

from pathlib import Path

import pytest

from handler.native import build, runtime
from handler.native.runtime import NativeKernels
from tests.support.native_builds import RUNNABLE


@pytest.fixture(scope="session")
def build_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding each runnable variant's library, freshly built from the sources."""
    directory = tmp_path_factory.mktemp("kernels")
    build.build(RUNNABLE, directory)
    return directory


@pytest.fixture(scope="session")
def builds(build_directory: Path) -> dict[str, NativeKernels]:
    """Each runnable build, loaded (and so checked against the Python mirrors), by variant name."""
    loaded = {variant.name: runtime.load(variant, build_directory) for variant in RUNNABLE}
    return {name: kernels for name, kernels in loaded.items() if kernels is not None}


@pytest.fixture(params=[variant.name for variant in RUNNABLE])
def kernels(request: pytest.FixtureRequest, builds: dict[str, NativeKernels]) -> NativeKernels:
    """Each runnable build in turn."""
    return builds[request.param]


@pytest.fixture
def reference(builds: dict[str, NativeKernels]) -> NativeKernels:
    """The plain-C build, which every other build is checked against."""
    return builds[build.PLAIN.name]
