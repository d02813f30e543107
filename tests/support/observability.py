"""Reading back what the service prints: its JSON log lines and EMF metric documents."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line of `output` that is a JSON object."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def log_lines(output: str) -> list[dict[str, Any]]:
    """The log lines in `output` (JSON objects that are not EMF documents)."""
    return [line for line in json_lines(output) if "_aws" not in line]


@dataclass(frozen=True)
class DataPoint:
    """One value of one metric from an EMF document, with its unit and dimension sets."""

    namespace: str
    name: str
    unit: str
    value: float
    dimension_sets: list[dict[str, str]]


def data_points(output: str) -> list[DataPoint]:
    """Every metric value in the EMF documents in `output`, checked against the EMF specification's
    shape: each metric's value and each dimension's value at the document's top level."""
    points = []
    for document in json_lines(output):
        if "_aws" not in document:
            continue
        assert isinstance(document["_aws"]["Timestamp"], int)
        for directive in document["_aws"]["CloudWatchMetrics"]:
            dimension_sets = [{key: document[key] for key in keys} for keys in directive["Dimensions"]]
            for metric in directive["Metrics"]:
                values = document[metric["Name"]]
                for value in values if isinstance(values, list) else [values]:
                    points.append(
                        DataPoint(directive["Namespace"], metric["Name"], metric["Unit"], value, dimension_sets)
                    )
    return points


def points_named(output: str, name: str) -> list[DataPoint]:
    """The data points of the metric `name`."""
    return [point for point in data_points(output) if point.name == name]


@dataclass
class RecordingTracer:
    """Stands in for Powertools' Tracer on Lambda: records the subsegments opened, in order."""

    disabled: bool = False
    subsegments: list[str] = field(default_factory=list)

    @property
    def provider(self) -> "RecordingTracer":
        return self

    @contextmanager
    def in_subsegment(self, name: str) -> Iterator[None]:
        self.subsegments.append(name)
        yield
