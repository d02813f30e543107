"""Application settings, read from the environment."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from handler.generation import CONTRACT_MAX_DURATION, DURATION_CEILING
from handler.security.keys import parse_digests

Precision = Literal["int8", "int4", "bf16", "fp32"]
"""Weights of the decoder's Linear layers."""

QUANTIZED: frozenset[Precision] = frozenset({"int8", "int4"})
"""The precisions the native step runs and serving artifacts are baked for."""

AUTO = "auto"
"""`NATIVE_KERNELS`'s default: the best build of the native kernels this CPU runs."""


def default_cache_dir() -> Path:
    """Where serving artifacts baked at a first start are kept: the user's cache directory."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "srocks-music"


class Settings(BaseSettings):
    """Every setting the app reads; names match the environment variables."""

    # Inputs stay out of error messages: a key pasted where its digest belongs must not be logged.
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", hide_input_in_errors=True)

    model_id: str = Field(
        default="facebook/musicgen-small",
        description="Hugging Face hub id or local directory of the MusicGen model.",
    )
    model_precision: Precision = Field(
        default="int8",
        description=(
            "Weights of the decoder's Linear layers: int8 (fast on any CPU), int4 (faster still, output"
            " further from fp32), bf16 (CPUs with bf16), fp32."
        ),
    )
    artifact_cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description=(
            "Where a model without a baked artifact for its precision gets one at its first start"
            " (about a quarter of the fp32 weights' size), so later starts load it instead of converting."
        ),
    )
    native_kernels: str = Field(
        default=AUTO,
        pattern=r"^[a-z0-9_]+$",
        description=(
            "Which build of the native kernels serves: auto (the best this CPU runs), or a build by name"
            " (x86: avx512vnni, avxvnni, avx2, plain; arm64: neon_i8mm, neon_dotprod, neon, plain), to compare"
            " builds on one machine. A build this CPU can't run"
            " fails the model load."
        ),
    )
    storage_dir: Path = Field(
        default=Path("./generated"),
        description="Directory for generated files when no S3 bucket is set.",
    )
    s3_bucket: str | None = Field(default=None, description="S3 bucket; when set, files are stored in S3.")
    s3_prefix: str = Field(default="", description="Key prefix for generated files in the bucket.")
    max_files: int = Field(default=100, ge=1, description="How many generated files are kept.")
    max_duration: int = Field(
        default=CONTRACT_MAX_DURATION,
        ge=1,
        le=DURATION_CEILING,
        description=(
            "Longest clip a request may ask for, in seconds: the contract's 30 by default. Past 30 s clips are"
            " made in overlapping 30 s windows; a clip that can't finish within a Lambda invocation is refused."
        ),
    )
    presign_expiry_seconds: int = Field(
        default=300, ge=1, le=604800, description="Lifetime of presigned download URLs."
    )
    job_queue_timeout_seconds: int = Field(
        default=900, ge=60, description="How long a job may wait for a worker before it counts as failed."
    )
    max_queued_jobs: int = Field(
        default=8,
        ge=1,
        description=(
            "Jobs that may wait for this process's worker (local mode); more, or a wait past"
            " JOB_QUEUE_TIMEOUT_SECONDS, are refused with 429 and a Retry-After."
        ),
    )
    api_keys: str = Field(
        default="",
        description=(
            "Comma-separated SHA-256 hex digests of the accepted API keys (`make api-key` makes one);"
            " empty: the API is open."
        ),
    )
    cors_origins: str = Field(
        default="", description="Comma-separated origins allowed to call the API from a browser; empty: none."
    )
    boto_connect_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long a connection to S3 or Lambda may take before the call is retried."
    )
    boto_read_timeout_seconds: float = Field(
        default=20.0, gt=0, description="How long S3 or Lambda may be silent before the call is retried."
    )
    boto_max_attempts: int = Field(
        default=3, ge=1, le=10, description="Attempts per S3 or Lambda call (botocore's standard retry mode)."
    )
    aws_lambda_function_name: str | None = Field(
        default=None, description="Set by Lambda itself: jobs then run in asynchronous self-invocations."
    )

    @field_validator("s3_bucket", mode="before")
    @classmethod
    def _blank_bucket_is_none(cls, value: object) -> object:
        return value or None

    @field_validator("api_keys")
    @classmethod
    def _keys_are_digests(cls, value: str) -> str:
        parse_digests(value)
        return value

    @property
    def api_key_digests(self) -> frozenset[str]:
        """The digests in `api_keys`."""
        return parse_digests(self.api_keys)

    @property
    def cors_origin_list(self) -> list[str]:
        """The origins in `cors_origins`."""
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @field_validator("s3_prefix")
    @classmethod
    def _prefix_ends_with_slash(cls, value: str) -> str:
        value = value.strip("/")
        return f"{value}/" if value else ""


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
