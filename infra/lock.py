"""Write the lock files (`make lock`): requirements.lock and requirements-dev.lock.

`python -m infra.lock [--upgrade]`, from the repository root, with uv installed (requirements-dev.txt
pins it). Each lock is `uv pip compile --universal --generate-hashes` of its requirements file:
every package, direct or not, at one version, with the SHA-256 of each of its files, for every
Python from 3.11 (the Makefile's) up, 3.12 (the image's) included, on x86_64 and aarch64 alike.
The dev lock is resolved with the runtime lock's versions as constraints, so the tests run exactly
the packages the image ships. An existing lock's versions are kept unless a requirement moved
(`--upgrade` takes the newest every requirement allows).

torch is PyTorch's CPU-only build as infra/torch-cpu.toml describes it (PyPI's Linux torch pulls in
CUDA): uv resolves it from that file's metadata, and the lock gets the file's wheel digests.
Nothing is downloaded from download.pytorch.org. Installers take torch's entry from the lock and
install it first from that file's `index-url`, then the whole lock from PyPI.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_CPU = ROOT / "infra" / "torch-cpu.toml"
# (requirements file, its lock), runtime first: the dev lock is constrained to the runtime one.
LOCKS = (("requirements.txt", "requirements.lock"), ("requirements-dev.txt", "requirements-dev.lock"))
# The oldest Python the locks serve; a universal resolution covers every later one too.
PYTHON_VERSION = "3.11"
PYPI = "https://pypi.org/simple"

_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)(\s*;[^\\]*)?")


@dataclass(frozen=True)
class TorchCpu:
    version: str
    index_url: str
    requires_dist: list[str]
    wheels: dict[str, str]  # wheel file name -> SHA-256

    @property
    def public_version(self) -> str:
        return self.version.split("+", 1)[0]


def load_torch_cpu(path: Path = TORCH_CPU) -> TorchCpu:
    data = tomllib.loads(path.read_text())
    return TorchCpu(data["version"], data["index-url"], list(data["requires-dist"]), dict(data["wheels"]))


def torch_pin(requirements: str) -> str:
    """The version requirements.txt pins torch to (`torch==X`)."""
    pins = [match.group(2) for line in requirements.splitlines() if (match := _ENTRY.match(line.strip()))]
    names = [match.group(1).lower() for line in requirements.splitlines() if (match := _ENTRY.match(line.strip()))]
    if "torch" not in names:
        raise SystemExit("requirements.txt pins no torch (torch==X)")
    return pins[names.index("torch")]


def flat_index(torch: TorchCpu) -> str:
    """An HTML page listing the recorded wheels with their digests: the resolver's source of torch."""
    links = [
        f'<a href="{torch.index_url}/{name.replace("+", "%2B")}#sha256={digest}">{name}</a><br/>'
        for name, digest in sorted(torch.wheels.items())
    ]
    return "<!DOCTYPE html>\n<html><body>\n" + "\n".join(links) + "\n</body></html>\n"


def uv_config(torch: TorchCpu) -> str:
    """uv.toml giving torch's metadata, so the resolver needs no wheel of it."""
    requires = ", ".join(f'"{requirement}"' for requirement in torch.requires_dist)
    return f'[[dependency-metadata]]\nname = "torch"\nversion = "{torch.version}"\nrequires-dist = [{requires}]\n'


def pins(lock: str) -> list[str]:
    """A lock's entries as constraints: `name==version ; markers`, without hashes."""
    found = [_ENTRY.match(line) for line in lock.splitlines()]
    return [match.group(0).strip() for match in found if match]


def finish(lock: str, torch: TorchCpu, renames: dict[str, str]) -> str:
    """uv's output made the committed lock: how to install it after the header, torch's entry given
    the recorded wheel digests (uv has none for it), and temporary paths in its `# via` notes
    replaced by what they stand for (`renames`)."""
    for temporary, meaning in renames.items():
        lock = lock.replace(temporary, meaning)
    lines = lock.splitlines()
    header = 0
    while header < len(lines) and lines[header].startswith("#"):
        header += 1
    # uv writes torch's entry bare, or with the digests of the lock it was given to keep.
    [entry] = [number for number, line in enumerate(lines) if line.split(" ")[0] == f"torch=={torch.version}"]
    end = entry + 1
    while end < len(lines) and lines[end].lstrip().startswith("--hash="):
        end += 1
    hashes = [f"    --hash=sha256:{digest}" for digest in sorted(torch.wheels.values())]
    lines[entry:end] = [f"torch=={torch.version} \\", *[line + " \\" for line in hashes[:-1]], hashes[-1]]
    lines[header:header] = [
        "# Every package from PyPI but torch, PyTorch's CPU-only build (infra/torch-cpu.toml): install",
        f"# torch's entry first, alone, from {torch.index_url} (--index-url, --no-deps),",
        "# then this file from PyPI; both with --require-hashes (the Makefile and infra/Dockerfile do).",
    ]
    return "\n".join(lines) + "\n"


def uv_executable() -> str:
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    if found is None:
        raise SystemExit("uv not found: `make setup-dev` installs it (requirements-dev.txt)")
    return found


def compile_lock(
    requirements: str, lock: str, torch: TorchCpu, work: Path, *, constraints: Path | None, upgrade: bool
) -> None:
    overrides = work / "torch-override.txt"
    overrides.write_text(f"torch=={torch.version}\n")
    config = work / "uv.toml"
    config.write_text(uv_config(torch))
    index = work / "torch-cpu.html"
    index.write_text(flat_index(torch))
    output = work / lock
    target = ROOT / lock
    if target.exists() and not upgrade:
        # uv keeps the versions of the file it writes to unless a requirement moved.
        shutil.copyfile(target, output)
    command = [
        uv_executable(),
        "pip",
        "compile",
        requirements,
        "--universal",
        f"--python-version={PYTHON_VERSION}",
        "--generate-hashes",
        f"--default-index={PYPI}",
        f"--override={overrides}",
        f"--config-file={config}",
        f"--find-links={index}",
        "--custom-compile-command=make lock",
        f"--output-file={output}",
        "--quiet",
    ]
    if constraints is not None:
        command.append(f"--constraint={constraints}")
    if upgrade:
        command.append("--upgrade")
    subprocess.run(command, cwd=ROOT, check=True)
    renames = {str(overrides): "infra/torch-cpu.toml"}
    if constraints is not None:
        renames[str(constraints)] = "requirements.lock"
    target.write_text(finish(output.read_text(), torch, renames))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="take the newest versions the requirements allow")
    args = parser.parse_args(argv)
    torch = load_torch_cpu()
    pinned = torch_pin((ROOT / "requirements.txt").read_text())
    if pinned != torch.public_version:
        raise SystemExit(
            f"requirements.txt pins torch=={pinned} but infra/torch-cpu.toml describes {torch.version}: "
            "update its version, requires-dist and wheels from https://download.pytorch.org/whl/cpu/torch/"
        )
    with tempfile.TemporaryDirectory(prefix="lock-") as directory:
        work = Path(directory)
        constraints: Path | None = None
        for requirements, lock in LOCKS:
            compile_lock(requirements, lock, torch, work, constraints=constraints, upgrade=args.upgrade)
            constraints = work / "runtime-pins.txt"
            constraints.write_text("\n".join(pins((ROOT / lock).read_text())) + "\n")
            print(f"wrote {lock}")


if __name__ == "__main__":
    main()
