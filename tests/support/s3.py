"""S3 as the tests see it: moto's server in a region other than us-east-1, and the requests made to it."""

from dataclasses import dataclass
from typing import Any

S3_REGION = "eu-west-1"
"""Not us-east-1, where S3's legacy global endpoint would hide region mistakes."""


@dataclass(frozen=True)
class S3Request:
    """One S3 request the storage code made or presigned: the API operation and its parameters."""

    operation: str
    params: dict[str, Any]
