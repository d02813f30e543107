"""The lock files: every requirement pinned in them, every package hashed, torch the CPU build,
and the Makefile and the Dockerfile installing them with --require-hashes."""

import re
import subprocess
from dataclasses import replace

import pytest

from infra import lock as lock_writer
from tests.support.dependencies import (
    LOCKS,
    ROOT,
    LockEntry,
    lock_problems,
    read_lock,
    requirement_pins,
    torch_cpu,
)
from tests.support.infra_files import DOCKERFILE, DOCKERIGNORE, dockerfile_stages

TORCH = torch_cpu()
MAKEFILE = ROOT / "Makefile"


def entries(lock: str) -> list[LockEntry]:
    return read_lock((ROOT / lock).read_text())


@pytest.mark.parametrize(("requirements", "lock"), LOCKS)
def test_the_lock_pins_every_requirement_at_its_version_with_hashes(requirements: str, lock: str) -> None:
    pins = requirement_pins(ROOT / requirements)
    assert lock_problems(pins, entries(lock), TORCH.version) == [], f"run `make lock` and commit {lock}"


def test_the_check_fails_when_requirements_and_lock_disagree() -> None:
    pins = requirement_pins(ROOT / "requirements.txt")
    locked = entries("requirements.lock")
    assert lock_problems(pins | {"fastapi": "0.1.0"}, locked, TORCH.version) == ["fastapi==0.1.0 is locked at 0.163.2"]
    assert lock_problems(pins | {"left-pad": "1.0"}, locked, TORCH.version) == ["left-pad==1.0 is not in the lock"]
    assert lock_problems(pins | {"torch": "2.14.0"}, locked, TORCH.version) == [
        "torch==2.14.0 is pinned but infra/torch-cpu.toml describes 2.13.0+cpu"
    ]
    assert lock_problems(pins | {"torch": "2.14.0"}, locked, "2.14.0+cpu") == ["torch==2.14.0 is locked at 2.13.0+cpu"]
    unhashed = [replace(entry, hashes=()) if entry.name == "numpy" else entry for entry in locked]
    assert lock_problems(pins, unhashed, TORCH.version) == ["numpy==2.4.6 has no hash"]
    cuda = [*locked, LockEntry("nvidia-cudnn-cu13", "9.20.0.48", "", ("sha256:" + "0" * 64,))]
    assert lock_problems(pins, cuda, TORCH.version) == ["nvidia-cudnn-cu13 is a CUDA package"]


def test_requirement_lines_that_are_not_exact_pins_are_refused(tmp_path) -> None:
    (tmp_path / "requirements.txt").write_text("numpy>=2\n")
    with pytest.raises(AssertionError, match="not an exact pin"):
        requirement_pins(tmp_path / "requirements.txt")


def test_the_dev_lock_runs_the_runtime_lock_versions() -> None:
    # CI tests the packages the image ships: every runtime entry is in the dev lock as it is.
    runtime = {(entry.name, entry.version, entry.markers) for entry in entries("requirements.lock")}
    dev = {(entry.name, entry.version, entry.markers) for entry in entries("requirements-dev.lock")}
    assert runtime <= dev, sorted(runtime - dev)


@pytest.mark.parametrize("lock", [lock for _, lock in LOCKS])
def test_torch_is_the_cpu_build_with_the_recorded_wheels_hashes(lock: str) -> None:
    [torch] = [entry for entry in entries(lock) if entry.name == "torch"]
    assert torch.version == TORCH.version
    assert torch.version.endswith("+cpu")
    assert torch.markers == ""
    assert sorted(torch.hashes) == sorted(f"sha256:{digest}" for digest in TORCH.wheels.values())


def test_the_recorded_torch_wheels_cover_development_and_both_image_architectures() -> None:
    version = TORCH.version
    assert set(TORCH.wheels) >= {
        f"torch-{version}-cp311-cp311-manylinux_2_28_x86_64.whl",  # the Makefile's Python 3.11
        f"torch-{version}-cp312-cp312-manylinux_2_28_x86_64.whl",  # the image, Architecture x86_64
        f"torch-{version}-cp312-cp312-manylinux_2_28_aarch64.whl",  # the image, Architecture arm64
    }
    assert all(name.startswith(f"torch-{version}-") for name in TORCH.wheels)
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in TORCH.wheels.values())
    assert len(set(TORCH.wheels.values())) == len(TORCH.wheels)


def _sed_program(text: str) -> str:
    [program] = re.findall(r"sed -n '([^']*)'", text)
    return str(program)


@pytest.mark.parametrize(("source", "program"), [("Makefile", "$$"), ("infra/Dockerfile", "$")])
def test_the_torch_entry_installers_take_first_is_the_whole_locked_entry(source: str, program: str) -> None:
    # The same sed the Makefile and the Dockerfile run, on the real lock: torch's line and every
    # hash line under it, and nothing else (a hash left out would refuse that platform's wheel).
    expression = _sed_program((ROOT / source).read_text())
    if program == "$$":  # make's escape for a dollar sign
        expression = expression.replace("$$", "$")
    for _, lock in LOCKS:
        text = (ROOT / lock).read_text()
        found = subprocess.run(["sed", "-n", expression], input=text, capture_output=True, text=True, check=True)
        [torch] = read_lock(found.stdout)
        assert torch == next(entry for entry in read_lock(text) if entry.name == "torch")


def test_make_installs_the_locks_with_require_hashes() -> None:
    text = MAKEFILE.read_text()
    [pip_install] = re.findall(r"^PIP_INSTALL := (.*)$", text, re.MULTILINE)
    assert "--require-hashes" in pip_install
    assert f"TORCH_INDEX ?= {TORCH.index_url}\n" in text
    assert "$(PIP_INSTALL) --no-deps --index-url $(TORCH_INDEX) -r $(VENV)/torch.lock\n" in text
    assert "$(PIP_INSTALL) -r $(1)\n" in text
    # Each stamp is remade when its lock changes, and installs that lock.
    assert "$(VENV)/.runtime: requirements.lock | $(BIN)/python\n\t$(call install-lock,requirements.lock)\n" in text
    assert (
        "$(VENV)/.dev: requirements.lock requirements-dev.lock | $(BIN)/python\n"
        "\t$(call install-lock,requirements-dev.lock)\n"
    ) in text
    assert "-r requirements.txt" not in text
    assert "-r requirements-dev.txt" not in text
    assert "\nlock: $(VENV)/.dev\n\t$(BIN)/python -m infra.lock $(LOCK_FLAGS)\n" in text


def test_the_image_installs_the_runtime_lock_with_require_hashes() -> None:
    deps = next(stage for stage in dockerfile_stages() if stage.name == "deps")
    assert ("COPY", "requirements.lock /tmp/requirements.lock") in deps.instructions
    assert ("ARG", f"TORCH_INDEX={TORCH.index_url}") in deps.instructions
    [install] = deps.run_commands()
    commands = [command.strip() for command in install.split(";")]
    pip = [command for command in commands if command.startswith("pip install")]
    assert pip == [
        "pip install --no-cache-dir --disable-pip-version-check --require-hashes --no-deps "
        '--index-url "${TORCH_INDEX}" -r /tmp/torch.lock',
        "pip install --no-cache-dir --disable-pip-version-check --require-hashes -r /tmp/requirements.lock",
    ]
    assert 'python -c "import torch; assert not torch.version.cuda, torch.version.cuda"' in install
    assert "requirements.txt" not in DOCKERFILE.read_text()
    assert "!requirements.lock" in DOCKERIGNORE.read_text().splitlines()


def test_the_lock_writer_gives_torch_the_recorded_hashes() -> None:
    torch = lock_writer.load_torch_cpu()
    uv_output = (
        "# This file was autogenerated by uv via the following command:\n#    make lock\n"
        "filelock==3.0 \\\n    --hash=sha256:" + "a" * 64 + "\n    # via torch\n"
        f"torch=={torch.version}\n    # via\n    #   --override /tmp/lock-x/torch-override.txt\n"
    )
    written = lock_writer.finish(uv_output, torch, {"/tmp/lock-x/torch-override.txt": "infra/torch-cpu.toml"})
    [filelock, locked_torch] = read_lock(written)
    assert filelock.hashes == ("sha256:" + "a" * 64,)
    assert sorted(locked_torch.hashes) == sorted(f"sha256:{digest}" for digest in torch.wheels.values())
    assert "--override infra/torch-cpu.toml" in written
    assert "/tmp/" not in written
    # Given the lock to keep, uv writes torch's entry with its digests: they are not doubled.
    entry = written[written.index("torch==") : written.index("    # via\n    #   --")]
    kept = uv_output.replace(f"torch=={torch.version}\n", entry)
    assert "--hash" in kept.split("torch==")[1]
    assert lock_writer.finish(kept, torch, {"/tmp/lock-x/torch-override.txt": "infra/torch-cpu.toml"}) == written


def test_requirements_pin_the_torch_the_lock_writer_describes() -> None:
    assert lock_writer.torch_pin((ROOT / "requirements.txt").read_text()) == TORCH.version.split("+")[0]
    index = lock_writer.flat_index(lock_writer.load_torch_cpu())
    for name, digest in TORCH.wheels.items():
        assert f'{TORCH.index_url}/{name.replace("+", "%2B")}#sha256={digest}"' in index
