"""The contract fuzzer at length: schemathesis, every phase and check, against the app in process.

    python -m benchmarks.fuzz                     # runs with new seeds until >= 5,000 generated requests
    python -m benchmarks.fuzz --max-examples 3 --min-requests 0    # one short run (what the tests run)

The app serves local storage in a temporary directory with a small file cap, beside a file it
must never touch, and an engine that answers at once (the fuzzer tests the HTTP contract, not
the music). Prints the requests made, failures, server errors, the files at rest against the cap
and whether anything outside the storage directory changed; writes JSON.
"""

import argparse
import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.speed import ROOT
from handler.app import create_app
from handler.settings import Settings
from handler.storage import LocalStorage
from tests.support.doubles import ToneGenerator
from tests.support.fuzzing import fuzz
from tests.support.jobs import WaitableJobQueue

MAX_FILES = 5


def snapshot(root: Path, skip: Path) -> dict[str, str]:
    """Every file under `root` but those under `skip`, with a digest of its bytes."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and skip not in path.parents
    }


def run(max_examples: int, seed: int) -> dict[str, Any]:
    """One fuzzing run; the figures and findings."""
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        storage_dir = root / "generated"
        (root / "secret.txt").write_text("outside the storage directory")
        (root / "gen_20250528_134211_a1b2c3d4.wav").write_bytes(b"RIFF not ours")
        before = snapshot(root, storage_dir)
        settings = Settings(storage_dir=storage_dir, max_files=MAX_FILES)
        jobs = WaitableJobQueue()
        app = create_app(settings, LocalStorage(storage_dir), ToneGenerator(), jobs)
        report = fuzz(app, max_examples, seed)
        jobs.wait_until_idle()
        files_at_rest = len(LocalStorage(storage_dir).list_files())
        untouched = snapshot(root, storage_dir) == before
    return {
        "requests": report.requests,
        "failures": report.failures,
        "server_errors": report.server_errors,
        "checks": sorted(report.checks_run),
        "completed": report.completed,
        "files_at_rest": files_at_rest,
        "max_files": MAX_FILES,
        "outside_untouched": untouched,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Fuzz, then print and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=150, help="examples per operation and phase")
    parser.add_argument("--seed", type=int, default=16, help="the first run's; each further run takes the next")
    parser.add_argument("--min-requests", type=int, default=5000, help="runs are repeated until this many")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "fuzz.json")
    args = parser.parse_args(argv)
    logging.getLogger("handler").setLevel(logging.WARNING)  # a line per request would bury the figures
    result = run(args.max_examples, args.seed)
    seed = args.seed
    while result["requests"] < args.min_requests:
        seed += 1
        more = run(args.max_examples, seed)
        result = {
            **more,
            "requests": result["requests"] + more["requests"],
            "failures": result["failures"] + more["failures"],
            "server_errors": result["server_errors"] + more["server_errors"],
            "checks": sorted({*result["checks"], *more["checks"]}),
            "completed": result["completed"] and more["completed"],
            "files_at_rest": max(result["files_at_rest"], more["files_at_rest"]),
            "outside_untouched": result["outside_untouched"] and more["outside_untouched"],
        }
    result["seeds"] = list(range(args.seed, seed + 1))
    print(
        f"Fuzz: {result['requests']} requests (seeds {result['seeds'][0]}-{result['seeds'][-1]}),"
        f" {len(result['failures'])} failures, {result['server_errors']} server"
        f" errors; {result['files_at_rest']} files at rest (cap {MAX_FILES});"
        f" outside the storage directory untouched: {result['outside_untouched']}"
    )
    for failure in result["failures"]:
        print(f"  {failure}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
