"""The S3 backend: files as objects under a prefix of a bucket, downloads as presigned URLs."""

import contextlib
import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from handler.filenames import created_at, format_of, is_valid_filename, is_valid_job_id
from handler.storage.base import (
    JOBS_FOLDER,
    Download,
    RemoteFile,
    StorageError,
    StoredFile,
    decode_json,
    encode_json,
    job_record_name,
    metadata_name,
    newest_first,
)

logger = logging.getLogger(__name__)

S3_ERRORS = (BotoCoreError, ClientError)
SIDECAR_READERS = 16
"""Sidecars read at once: a listing of the 100 files the cap keeps reads theirs in a few round trips."""
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


def _is_not_found(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES


def _is_access_denied(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in {"403", "AccessDenied"}


def _stored_file(filename: str, listed: Mapping[str, Any]) -> StoredFile:
    return StoredFile(filename, int(listed["Size"]), created_at(filename), listed["LastModified"])


class S3Storage:
    """Files as objects under a prefix of an S3 bucket; downloads are presigned GET URLs."""

    backend = "s3"

    def __init__(self, client: Any, bucket: str, prefix: str = "", presign_expiry_seconds: int = 300) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.presign_expiry_seconds = presign_expiry_seconds

    def save(self, filename: str, data: bytes, metadata: Mapping[str, Any]) -> None:
        """Put the sidecar, then the file; on failure delete the sidecar."""
        sidecar = self._key(metadata_name(filename))
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=sidecar,
                Body=encode_json(metadata),
                ContentType="application/json; charset=utf-8",
            )
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(filename), Body=data, ContentType=format_of(filename).media_type
            )
        except S3_ERRORS as exc:
            with contextlib.suppress(*S3_ERRORS):
                self.client.delete_object(Bucket=self.bucket, Key=sidecar)
            raise StorageError("could not write to S3") from exc

    def list_files(self) -> list[StoredFile]:
        """Every generated file directly under the prefix, newest first."""
        files = []
        try:
            # The delimiter keeps job records (a folder below the prefix) out of the listing.
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self.prefix) :]
                    if is_valid_filename(name):
                        files.append(_stored_file(name, obj))
        except S3_ERRORS as exc:
            raise StorageError("could not list S3 objects") from exc
        return newest_first(files)

    def stat(self, filename: str) -> StoredFile | None:
        """The file as listed, or None if there is none."""
        found = self._find(self._key(filename))
        return None if found is None else _stored_file(filename, found)

    def read_metadata(self, filenames: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The sidecars of `filenames` that exist and hold a JSON object, read in parallel.

        Which sidecars exist is asked as one listing first: a GET of a missing key answers 403, not
        404, to a role whose ListBucket is limited to the prefix (see `_exists`).
        """
        if not filenames:
            return {}
        wanted = {self._key(metadata_name(filename)): filename for filename in filenames}
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            present = [
                obj["Key"]
                for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/")
                for obj in page.get("Contents", [])
                if obj["Key"] in wanted
            ]
        except S3_ERRORS as exc:
            raise StorageError("could not list S3 objects") from exc
        with ThreadPoolExecutor(max_workers=SIDECAR_READERS) as pool:
            bodies = list(pool.map(self._read_sidecar, present))
        sidecars = {}
        for key, body in zip(present, bodies, strict=True):
            sidecar = None if body is None else decode_json(body)
            if sidecar is None:
                logger.warning("sidecar is missing or not a JSON object", extra={"key": key})
            else:
                sidecars[wanted[key]] = sidecar
        return sidecars

    def _read_sidecar(self, key: str) -> bytes | None:
        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            # Deleted since the listing (by a prune or a DELETE): the file is going too.
            if _is_not_found(exc) or _is_access_denied(exc):
                return None
            raise StorageError("could not read a sidecar") from exc
        except BotoCoreError as exc:
            raise StorageError("could not read a sidecar") from exc
        return body

    def download(self, filename: str) -> Download | None:
        """A presigned GET URL that downloads the file as an attachment."""
        key = self._key(filename)
        if not self._exists(key):
            return None
        try:
            url = self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": key,
                    "ResponseContentType": format_of(filename).media_type,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"',
                },
                ExpiresIn=self.presign_expiry_seconds,
            )
        except S3_ERRORS as exc:
            raise StorageError("could not sign a download URL") from exc
        return RemoteFile(url)

    @functools.cached_property
    def download_origin(self) -> str:
        """Where presigned downloads point: the origin of a URL signed (locally, no request) for a key here."""
        try:
            url = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key("origin")}, ExpiresIn=1
            )
        except S3_ERRORS as exc:
            raise StorageError("could not sign a download URL") from exc
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"

    def delete(self, filenames: Sequence[str]) -> None:
        """Delete files and their sidecars, up to 1000 keys a request."""
        self._delete_keys([self._key(name) for f in filenames for name in (f, metadata_name(f))])

    def remove_leftovers(self) -> None:
        """Nothing to do: each object is written whole by one PUT or not at all."""

    def put_job(self, job_id: str, record: Mapping[str, Any]) -> None:
        """Write a job record, replacing any before it."""
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(job_record_name(job_id)),
                Body=encode_json(record),
                ContentType="application/json; charset=utf-8",
            )
        except S3_ERRORS as exc:
            raise StorageError("could not write a job record") from exc

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """A job record, or None if there is none."""
        key = self._key(job_record_name(job_id))
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            # A missing key reads as 403, not 404, under a prefix-limited ListBucket (see _exists).
            if _is_not_found(exc) or (_is_access_denied(exc) and not self._exists(key)):
                return None
            raise StorageError("could not read a job record") from exc
        except BotoCoreError as exc:
            raise StorageError("could not read a job record") from exc
        try:
            record: dict[str, Any] = json.loads(body)
        except ValueError as exc:
            raise StorageError("job record is not JSON") from exc
        return record

    def list_jobs(self) -> list[str]:
        """The ids of every job record."""
        folder = self._key(f"{JOBS_FOLDER}/")
        job_ids = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
                for obj in page.get("Contents", []):
                    job_id = obj["Key"][len(folder) :].removesuffix(".json")
                    if is_valid_job_id(job_id):
                        job_ids.append(job_id)
        except S3_ERRORS as exc:
            raise StorageError("could not list job records") from exc
        return job_ids

    def delete_jobs(self, job_ids: Sequence[str]) -> None:
        """Delete job records, up to 1000 a request."""
        self._delete_keys([self._key(job_record_name(job_id)) for job_id in job_ids])

    def _delete_keys(self, keys: Sequence[str]) -> None:
        try:
            for start in range(0, len(keys), 1000):
                batch = [{"Key": key} for key in keys[start : start + 1000]]
                result = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                if result.get("Errors"):
                    raise StorageError(f"S3 refused to delete {len(result['Errors'])} objects")
        except S3_ERRORS as exc:
            raise StorageError("could not delete S3 objects") from exc

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def _exists(self, key: str) -> bool:
        """Whether `key` exists."""
        return self._find(key) is not None

    def _find(self, key: str) -> dict[str, Any] | None:
        """The listing entry of `key`, or None if it doesn't exist, asked as a listing under the key itself.

        Not HeadObject: for a missing key S3 answers HeadObject with 404 only to callers allowed
        s3:ListBucket on the whole bucket, and 403 to a role whose ListBucket is limited to the
        prefix (template.yaml's least privilege). A listing with Prefix=key is covered by that
        grant; the key itself is the first match if it exists, as it sorts before longer keys.
        """
        try:
            response = self.client.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1)
        except S3_ERRORS as exc:
            raise StorageError("could not read from S3") from exc
        found: dict[str, Any] | None = next((obj for obj in response.get("Contents", []) if obj["Key"] == key), None)
        return found


def s3_client(connect_timeout_s: float = 5.0, read_timeout_s: float = 20.0, max_attempts: int = 3) -> Any:
    """An S3 client whose presigned URLs work in any region and whose calls end.

    SigV4 with the Lambda's own region (boto3 reads only AWS_DEFAULT_REGION; AWS_REGION is
    honoured first here) and virtual-hosted regional URLs: the legacy global endpoint redirects
    for buckets outside us-east-1, which breaks presigned URLs. AWS_ENDPOINT_URL_S3 is read by
    boto3 itself. Explicit timeouts and the standard retry mode, so a stalled S3 fails a call
    (a 503) within about `max_attempts` x (`connect_timeout_s` or `read_timeout_s`) rather than
    holding a request for botocore's default minute per attempt.
    """
    import boto3

    config = aws_client_config(connect_timeout_s, read_timeout_s, max_attempts).merge(_s3_addressing())
    return boto3.client("s3", region_name=aws_region(), config=config)


def aws_client_config(connect_timeout_s: float, read_timeout_s: float, max_attempts: int) -> Any:
    """botocore's settings for a client whose calls end: timeouts and the standard retry mode."""
    from botocore.config import Config

    return Config(
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
    )


def _s3_addressing() -> Any:
    from botocore.config import Config

    return Config(signature_version="s3v4", s3={"addressing_style": "virtual"})


def aws_region() -> str | None:
    """The Lambda's own region (AWS_REGION), else boto3's AWS_DEFAULT_REGION."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
