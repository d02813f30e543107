"""Latency of the cheap endpoints under load while a generation runs, on loopback.

    python -m benchmarks.load                 # musicgen-small architecture (random weights), 50 clients, 20 s
    python -m benchmarks.load --smoke         # tiny model, 3 clips listed, a few seconds; what CI runs

`make run`'s server in its own process; a clip of `--clip-seconds` is generated as a job while
`--clients` concurrent clients call `GET /` and `GET /files/` in turns for `--seconds`. Prints
p50/p99 per route, the error count and whether the generation ran throughout; writes JSON.
"""

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

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


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


async def hammer(base_url: str, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` concurrent clients, each calling the routes in turn until `seconds` have passed."""
    latencies: dict[str, list[float]] = {route: [] for route in ROUTES}
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        end = time.perf_counter() + seconds

        async def one_client(index: int) -> None:
            turn = index
            while time.perf_counter() < end:
                route = ROUTES[turn % len(ROUTES)]
                turn += 1
                started = time.perf_counter()
                try:
                    response = await client.get(route)
                except httpx.HTTPError as exc:
                    errors.append(f"{route}: {type(exc).__name__}")
                    continue
                latencies[route].append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors.append(f"{route}: {response.status_code}")

        await asyncio.gather(*(one_client(index) for index in range(clients)))
    return {
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


def run(model: Path, clients: int, seconds: float, clip_seconds: int, listed_files: int) -> dict[str, Any]:
    """The load, against a fresh server on `model` listing `listed_files` clips, while one generation runs."""
    with local_server(model, "int8") as (client, _, _):
        wait_until_loaded(client)
        for seed in range(listed_files):
            made = client.post("/generate/", json={"text": PROMPT, "duration": 1, "seed": seed})
            assert made.status_code == 200, made.text
        job = client.post(
            "/generate/", json={"text": PROMPT, "duration": clip_seconds}, headers={"Prefer": "respond-async"}
        )
        assert job.status_code == 202, job.text
        status_url = job.json()["status_url"]
        while client.get(status_url).json()["status"] == "queued":
            time.sleep(0.01)  # another process: its job's status can only be read
        result = asyncio.run(hammer(str(client.base_url), clients, seconds))
        result["generation_ran_throughout"] = client.get(status_url).json()["status"] == "running"
    return result


def report_lines(result: dict[str, Any], clients: int, seconds: float) -> list[str]:
    """The figures as printed."""
    lines = [
        f"Load: {clients} clients for {seconds:g} s while a generation runs; CPU {result['cpu']} ({result['flags']})"
    ]
    for route, figures in result["routes"].items():
        lines.append(
            f"  GET {route}: p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms,"
            f" max {figures['max_ms']:.1f} ms over {figures['requests']} requests"
        )
    lines.append(f"  errors: {len(result['errors'])}; generation ran throughout: {result['generation_ran_throughout']}")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the load and print and write its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model, short run (CI)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clip-seconds", type=int, default=30, help="the generation running meanwhile")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where the benchmark model is kept")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "load.json")
    args = parser.parse_args(argv)
    listed_files = 3 if args.smoke else LISTED_FILES
    result = run(model_dir(args.smoke, args.cache_dir), args.clients, args.seconds, args.clip_seconds, listed_files)
    result |= {
        "cpu": cpu_model(),
        "flags": " ".join(sorted(cpu_flags() & NOTABLE_FLAGS)),
        "clients": args.clients,
        "seconds": args.seconds,
        "listed_files": listed_files,
    }
    print("\n".join(report_lines(result, args.clients, args.seconds)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
