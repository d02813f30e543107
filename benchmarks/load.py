"""Latency of the cheap endpoints under load while a generation runs, on loopback.

    python -m benchmarks.load                 # musicgen-small architecture (random weights), 50 clients
    python -m benchmarks.load --smoke         # tiny model, 3 clips listed, a few seconds; what CI runs

`make run`'s server in its own process. For each pace, a clip of `--clip-seconds` is generated as a
job while `--clients` concurrent clients call `GET /` and `GET /files/` in turns for `--seconds`.
A paced client sends one request every 1/rate seconds and each latency is timed from when its
request was due, so a slow answer also counts against the requests it delayed (no coordinated
omission); `closed` sends the next request as soon as the last is answered, which measures how many
requests the server gets through, and its latencies are then clients / throughput. Prints p50/p99
per route and pace, the error count and whether the generation ran throughout; writes JSON.

The clients are aiohttp's: httpx's client spends more CPU per request than the server does, and on
a 2-vCPU machine it would measure itself.
"""

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.speed import (
    CACHE_DIR,
    NOTABLE_FLAGS,
    PROMPT,
    ROOT,
    cpu_model,
    local_server,
    model_dir,
    wait_until_loaded,
)
from handler.cpu import cpu_flags

ROUTES = ("/", "/files/")
LISTED_FILES = 20
"""Clips made before the load, so `GET /files/` lists (and reads the sidecars of) a real page; the
smoke run makes 3 (each costs CI a generation)."""
CLOSED = "closed"
DEFAULT_PACES = ("1", "4", CLOSED)
"""Requests per second per client: 1 is a page polling a job, 4 a busy one; `closed` is no pause."""


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


async def hammer(base_url: str, clients: int, seconds: float, pace: str = CLOSED) -> dict[str, Any]:
    """`clients` concurrent clients, each calling the routes in turn at `pace` (requests per second
    per client, or `closed`) until `seconds` have passed."""
    interval = 0.0 if pace == CLOSED else 1 / float(pace)
    latencies: dict[str, list[float]] = {route: [] for route in ROUTES}
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        end = started + seconds

        async def one_client(index: int) -> None:
            turn = index
            # Paced clients start spread over one interval, as independent users would; each due time
            # is counted from the first (added up, the intervals' rounding would let one more in).
            first = due = started + interval * index / clients
            while due < end:
                if (wait := due - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                sent = due if interval else time.perf_counter()
                route = ROUTES[turn % len(ROUTES)]
                turn += 1
                try:
                    async with session.get(route) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors.append(f"{route}: {type(exc).__name__}")
                else:
                    latencies[route].append(time.perf_counter() - sent)
                    if status != 200:
                        errors.append(f"{route}: {status}")
                due = first + interval * (turn - index) if interval else time.perf_counter()

        await asyncio.gather(*(one_client(index) for index in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "pace": pace,
        "requests_per_second": sum(map(len, latencies.values())) / elapsed,
        "routes": {
            route: {
                "requests": len(times),
                "p50_ms": 1000 * statistics.median(times),
                "p99_ms": 1000 * percentile(times, 0.99),
                "max_ms": 1000 * max(times),
            }
            for route, times in latencies.items()
            if times
        },
        "errors": errors,
    }


def run(
    model: Path, clients: int, seconds: float, clip_seconds: int, paces: list[str], listed_files: int
) -> dict[str, Any]:
    """The load at each pace, against a fresh server on `model` listing `listed_files` clips, each
    while a generation runs."""
    phases = []
    with local_server(model, "int8") as (client, _, _):
        wait_until_loaded(client)
        for seed in range(listed_files):
            made = client.post("/generate/", json={"text": PROMPT, "duration": 1, "seed": seed})
            assert made.status_code == 200, made.text
        for pace in paces:
            job = client.post(
                "/generate/", json={"text": PROMPT, "duration": clip_seconds}, headers={"Prefer": "respond-async"}
            )
            assert job.status_code == 202, job.text
            status_url = job.json()["status_url"]
            while client.get(status_url).json()["status"] == "queued":
                time.sleep(0.01)  # another process: its job's status can only be read
            phase = asyncio.run(hammer(str(client.base_url), clients, seconds, pace))
            phase["generation_ran_throughout"] = client.get(status_url).json()["status"] == "running"
            phases.append(phase)
            while client.get(status_url).json()["status"] == "running":
                time.sleep(0.1)
    return {"phases": phases}


def pace_label(pace: str) -> str:
    """How a pace is printed."""
    return "closed loop (no pause)" if pace == CLOSED else f"{pace} request/s per client"


def report_lines(result: dict[str, Any]) -> list[str]:
    """The figures as printed."""
    lines = [
        f"Load: {result['clients']} clients for {result['seconds']:g} s at each pace while a generation runs;"
        f" CPU {result['cpu']} ({result['flags']})"
    ]
    for phase in result["phases"]:
        lines.append(f"  {pace_label(phase['pace'])}: {phase['requests_per_second']:.0f} requests/s answered")
        for route, figures in phase["routes"].items():
            lines.append(
                f"    GET {route}: p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms,"
                f" max {figures['max_ms']:.1f} ms over {figures['requests']} requests"
            )
        lines.append(
            f"    errors: {len(phase['errors'])}; generation ran throughout: {phase['generation_ran_throughout']}"
        )
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the load and print and write its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model, short run (CI)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15.0, help="per pace")
    parser.add_argument("--paces", nargs="+", default=list(DEFAULT_PACES), help=f"requests/s per client, or {CLOSED}")
    parser.add_argument("--clip-seconds", type=int, default=30, help="the generation running meanwhile")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where the benchmark model is kept")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "load.json")
    args = parser.parse_args(argv)
    listed_files = 3 if args.smoke else LISTED_FILES
    result = run(
        model_dir(args.smoke, args.cache_dir), args.clients, args.seconds, args.clip_seconds, args.paces, listed_files
    )
    result |= {
        "cpu": cpu_model(),
        "flags": " ".join(sorted(cpu_flags() & NOTABLE_FLAGS)),
        "clients": args.clients,
        "seconds": args.seconds,
        "listed_files": listed_files,
    }
    print("\n".join(report_lines(result)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
