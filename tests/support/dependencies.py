"""Readers for requirements*.txt and the lock files, and the checks that hold the locks to them.

Written apart from infra/lock.py (which writes the locks), so a fault in the writer can't hide
itself from the tests.
"""

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TORCH_CPU = ROOT / "infra" / "torch-cpu.toml"
# (requirements file, the lock made from it)
LOCKS = (("requirements.txt", "requirements.lock"), ("requirements-dev.txt", "requirements-dev.lock"))
# What a CUDA build of torch drags in: never in a lock of this CPU-only service.
GPU_ONLY = re.compile(r"nvidia-.*|cuda-.*|triton|pytorch-triton")

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)\s*(;.*)?$")


def normalize(name: str) -> str:
    """A distribution name as indexes compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins(path: Path) -> dict[str, str]:
    """{name: version} of a requirements file's `name[extras]==version` lines, following `-r`.

    Anything else that is not a comment (a range, a URL, an option) is refused: the lock check
    only means something for exact pins.
    """
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r "):
            pins |= requirement_pins(path.parent / line.removeprefix("-r ").strip())
            continue
        match = _PIN.match(line)
        assert match, f"{path.name}: not an exact pin: {raw!r}"
        pins[normalize(match.group(1))] = match.group(3)
    return pins


@dataclass(frozen=True)
class LockEntry:
    name: str
    version: str
    markers: str
    hashes: tuple[str, ...]


def read_lock(text: str) -> list[LockEntry]:
    """A lock's entries: `name==version [; markers] \\` and its `--hash=sha256:...` lines."""
    entries: list[LockEntry] = []
    logical = re.sub(r"\\\n", " ", text)  # continuation lines joined
    for line in logical.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert not line[0].isspace(), f"a stray continuation: {line!r}"
        assert not line.startswith("-"), f"an option in a lock (installers name indexes themselves): {line!r}"
        requirement, *options = re.split(r"\s+(?=--)", line.strip())
        match = _PIN.match(requirement.strip())
        assert match, f"not an exact pin: {requirement!r}"
        hashes = tuple(option.removeprefix("--hash=") for option in options)
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", digest) for digest in hashes), options
        markers = (match.group(4) or "").lstrip(";").strip()
        entries.append(LockEntry(normalize(match.group(1)), match.group(3), markers, hashes))
    return entries


@dataclass(frozen=True)
class TorchCpu:
    version: str
    index_url: str
    wheels: dict[str, str]


def torch_cpu() -> TorchCpu:
    data = tomllib.loads(TORCH_CPU.read_text())
    return TorchCpu(data["version"], data["index-url"], dict(data["wheels"]))


def lock_problems(pins: dict[str, str], entries: list[LockEntry], torch_version: str) -> list[str]:
    """What is wrong with a lock for these direct pins: a pin missing from it or at another version
    (torch is locked at `torch_version`, the CPU build of its pin), an entry without hashes, a
    package only a CUDA build needs."""
    problems: list[str] = []
    locked: dict[str, set[str]] = {}
    for entry in entries:
        locked.setdefault(entry.name, set()).add(entry.version)
        if not entry.hashes:
            problems.append(f"{entry.name}=={entry.version} has no hash")
        if GPU_ONLY.fullmatch(entry.name):
            problems.append(f"{entry.name} is a CUDA package")
    for name, version in sorted(pins.items()):
        expected = torch_version if name == "torch" else version
        if name == "torch" and torch_version.split("+", 1)[0] != version:
            problems.append(f"torch=={version} is pinned but infra/torch-cpu.toml describes {torch_version}")
        if name not in locked:
            problems.append(f"{name}=={version} is not in the lock")
        elif locked[name] != {expected}:
            problems.append(f"{name}=={version} is locked at {', '.join(sorted(locked[name]))}")
    return problems
