"""Running schemathesis, the contract fuzzer, against the app in process, as `st run --checks all` would."""

from dataclasses import dataclass, field

import schemathesis
from fastapi import FastAPI
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import StopReason, events, from_schema


@dataclass
class FuzzReport:
    """What a run found: one line per failed check or error, and every check that ran."""

    failures: list[str] = field(default_factory=list)
    checks_run: set[str] = field(default_factory=set)
    completed: bool = False
    requests: int = 0
    server_errors: int = 0
    statuses: set[int] = field(default_factory=set)
    """Every status code the app answered with: which answers a run with few examples reached."""


def fuzz(app: FastAPI, max_examples: int, seed: int, headers: dict[str, str] | None = None) -> FuzzReport:
    """Every phase (coverage, fuzzing, stateful) and every check against `app`'s own /openapi.json,
    with at most `max_examples` examples an operation, reproducibly from `seed`; `headers` go with
    every request (checks such as `ignored_auth` also try without them)."""
    config = SchemathesisConfig.from_dict(
        {"seed": seed, "generation": {"max-examples": max_examples, "database": "none"}, "headers": headers or {}}
    )
    config.projects.override.checks.update(included_check_names=["all"])
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    report = FuzzReport()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            record_checks(report, event)
        elif isinstance(event, events.NonFatalError):
            report.failures.append(f"{event.label}: error: {event.value!r}")
        elif isinstance(event, events.FatalError):
            report.failures.append(f"fatal error: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            report.completed = event.stop_reason is StopReason.COMPLETED
            report.failures.extend(f"after the run: {failure.title}" for failure in event.failures)
    return report


def record_checks(report: FuzzReport, event: events.ScenarioFinished) -> None:
    """Add a scenario's checks to `report`, each failure with the request and response it came from."""
    recorder = event.recorder
    for exchanged in recorder.interactions.values():
        report.requests += 1
        if exchanged.response is not None:
            report.statuses.add(exchanged.response.status_code)
            if exchanged.response.status_code >= 500:
                report.server_errors += 1
    for case_id, checks in recorder.checks.items():
        for check in checks:
            report.checks_run.add(check.name)
            if check.failure_info is None:
                continue
            interaction = recorder.interactions.get(case_id)
            exchange = ""
            if interaction is not None:
                request = interaction.request
                status = interaction.response.status_code if interaction.response is not None else "no response"
                exchange = f" ({request.method} {request.uri} -> {status})"
            line = f"{recorder.label}: {check.name}: {check.failure_info.failure.title}{exchange}"
            if line not in report.failures:
                report.failures.append(line)
