"""Where generated files live: a local directory or an S3 bucket, behind one interface."""

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from handler.filenames import created_at, is_valid_filename, is_valid_job_id, job_id_for

logger = logging.getLogger(__name__)

WAV_CONTENT_TYPE = "audio/wav"
S3_ERRORS = (BotoCoreError, ClientError)
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


def _is_not_found(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES


def _is_access_denied(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in {"403", "AccessDenied"}


class StorageError(RuntimeError):
    """The storage backend failed; nothing half-written is left listed."""


@dataclass(frozen=True)
class StoredFile:
    """A generated file as listed."""

    filename: str
    size_bytes: int
    created_at: datetime


@dataclass(frozen=True)
class LocalFile:
    """A download served from the local filesystem."""

    path: Path


@dataclass(frozen=True)
class RemoteFile:
    """A download served by redirecting to a presigned URL."""

    url: str


Download = LocalFile | RemoteFile


class Storage(Protocol):
    """The small interface every backend implements."""

    @property
    def backend(self) -> str: ...

    def save(self, filename: str, data: bytes, metadata: Mapping[str, Any]) -> None: ...

    def list_files(self) -> list[StoredFile]: ...

    def download(self, filename: str) -> Download | None: ...

    def delete(self, filenames: Sequence[str]) -> None: ...

    def put_job(self, job_id: str, record: Mapping[str, Any]) -> None: ...

    def get_job(self, job_id: str) -> dict[str, Any] | None: ...

    def list_jobs(self) -> list[str]: ...

    def delete_jobs(self, job_ids: Sequence[str]) -> None: ...


def metadata_name(filename: str) -> str:
    """The sidecar that keeps a file's prompt and parameters."""
    return filename.removesuffix(".wav") + ".json"


def newest_first(files: list[StoredFile]) -> list[StoredFile]:
    """Files ordered newest first; generated names sort in creation order."""
    return sorted(files, key=lambda f: f.filename, reverse=True)


def prune(storage: Storage, keep: int, protect: str | None = None) -> list[str]:
    """Delete all but the newest `keep` files, and of job records, each in one batch.

    Returns the file names deleted. `protect` (the file just saved) is never among them, even
    when its name, given when its request arrived, sorts older than files saved before it.
    Job records go with their files; job ids sort in creation order like file names.
    """
    files = [f.filename for f in newest_first(storage.list_files())]
    if protect in files:
        files.remove(protect)
        files.insert(0, protect)
    excess = files[keep:]
    if excess:
        storage.delete(excess)
    pruned_jobs = {job_id_for(name) for name in excess}
    job_ids = sorted(storage.list_jobs(), reverse=True)
    old_jobs = [job_id for index, job_id in enumerate(job_ids) if index >= keep or job_id in pruned_jobs]
    if old_jobs:
        storage.delete_jobs(old_jobs)
    return excess


JOBS_FOLDER = "jobs"
"""Job records live in this folder of the storage, beside the generated files."""


def _job_name(job_id: str) -> str:
    return f"{JOBS_FOLDER}/{job_id}.json"


def _encode(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode()


class LocalStorage:
    """Files in a local directory; each write is atomic (temporary file, then rename)."""

    backend = "local"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, filename: str, data: bytes, metadata: Mapping[str, Any]) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write_atomic(self.directory / metadata_name(filename), _encode(metadata))
            self._write_atomic(self.directory / filename, data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._remove(metadata_name(filename))
            raise StorageError("could not write to local storage") from exc

    def list_files(self) -> list[StoredFile]:
        if not self.directory.is_dir():
            return []
        try:
            files = [
                StoredFile(entry.name, entry.stat().st_size, created_at(entry.name))
                for entry in os.scandir(self.directory)
                if is_valid_filename(entry.name) and entry.is_file()
            ]
        except OSError as exc:
            raise StorageError("could not list local storage") from exc
        return newest_first(files)

    def download(self, filename: str) -> Download | None:
        path = self.directory / filename
        return LocalFile(path) if path.is_file() else None

    def delete(self, filenames: Sequence[str]) -> None:
        try:
            for filename in filenames:
                self._remove(filename)
                self._remove(metadata_name(filename))
        except OSError as exc:
            raise StorageError("could not delete from local storage") from exc

    def put_job(self, job_id: str, record: Mapping[str, Any]) -> None:
        try:
            (self.directory / JOBS_FOLDER).mkdir(parents=True, exist_ok=True)
            self._write_atomic(self.directory / _job_name(job_id), _encode(record))
        except OSError as exc:
            raise StorageError("could not write a job record") from exc

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = json.loads((self.directory / _job_name(job_id)).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StorageError("could not read a job record") from exc
        return record

    def list_jobs(self) -> list[str]:
        folder = self.directory / JOBS_FOLDER
        if not folder.is_dir():
            return []
        try:
            return [path.stem for path in folder.glob("*.json") if is_valid_job_id(path.stem)]
        except OSError as exc:
            raise StorageError("could not list job records") from exc

    def delete_jobs(self, job_ids: Sequence[str]) -> None:
        try:
            for job_id in job_ids:
                self._remove(_job_name(job_id))
        except OSError as exc:
            raise StorageError("could not delete job records") from exc

    def _write_atomic(self, path: Path, data: bytes) -> None:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def _remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / name).unlink()


class S3Storage:
    """Files as objects under a prefix of an S3 bucket; downloads are presigned GET URLs."""

    backend = "s3"

    def __init__(self, client: Any, bucket: str, prefix: str = "", presign_expiry_seconds: int = 300) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.presign_expiry_seconds = presign_expiry_seconds

    def save(self, filename: str, data: bytes, metadata: Mapping[str, Any]) -> None:
        sidecar = self._key(metadata_name(filename))
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=sidecar,
                Body=_encode(metadata),
                ContentType="application/json; charset=utf-8",
            )
            self.client.put_object(Bucket=self.bucket, Key=self._key(filename), Body=data, ContentType=WAV_CONTENT_TYPE)
        except S3_ERRORS as exc:
            with contextlib.suppress(*S3_ERRORS):
                self.client.delete_object(Bucket=self.bucket, Key=sidecar)
            raise StorageError("could not write to S3") from exc

    def list_files(self) -> list[StoredFile]:
        files = []
        try:
            # The delimiter keeps job records (a folder below the prefix) out of the listing.
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self.prefix) :]
                    if is_valid_filename(name):
                        files.append(StoredFile(name, int(obj["Size"]), created_at(name)))
        except S3_ERRORS as exc:
            raise StorageError("could not list S3 objects") from exc
        return newest_first(files)

    def download(self, filename: str) -> Download | None:
        key = self._key(filename)
        if not self._exists(key):
            return None
        try:
            url = self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": key,
                    "ResponseContentType": WAV_CONTENT_TYPE,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"',
                },
                ExpiresIn=self.presign_expiry_seconds,
            )
        except S3_ERRORS as exc:
            raise StorageError("could not sign a download URL") from exc
        return RemoteFile(url)

    def delete(self, filenames: Sequence[str]) -> None:
        self._delete_keys([self._key(name) for f in filenames for name in (f, metadata_name(f))])

    def put_job(self, job_id: str, record: Mapping[str, Any]) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(_job_name(job_id)),
                Body=_encode(record),
                ContentType="application/json; charset=utf-8",
            )
        except S3_ERRORS as exc:
            raise StorageError("could not write a job record") from exc

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        key = self._key(_job_name(job_id))
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
        self._delete_keys([self._key(_job_name(job_id)) for job_id in job_ids])

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
        """Whether `key` exists, asked as a listing under the key itself.

        Not HeadObject: for a missing key S3 answers HeadObject with 404 only to callers allowed
        s3:ListBucket on the whole bucket, and 403 to a role whose ListBucket is limited to the
        prefix (template.yaml's least privilege). A listing with Prefix=key is covered by that
        grant; the key itself is the first match if it exists, as it sorts before longer keys.
        """
        try:
            response = self.client.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1)
        except S3_ERRORS as exc:
            raise StorageError("could not read from S3") from exc
        return any(obj["Key"] == key for obj in response.get("Contents", []))


def s3_client() -> Any:
    """An S3 client whose presigned URLs work in any region.

    SigV4 with the Lambda's own region (boto3 reads only AWS_DEFAULT_REGION; AWS_REGION is
    honoured first here) and virtual-hosted regional URLs: the legacy global endpoint redirects
    for buckets outside us-east-1, which breaks presigned URLs. AWS_ENDPOINT_URL_S3 is read by
    boto3 itself.
    """
    import boto3
    from botocore.config import Config

    config = Config(signature_version="s3v4", s3={"addressing_style": "virtual"})
    return boto3.client("s3", region_name=aws_region(), config=config)


def aws_region() -> str | None:
    """The Lambda's own region (AWS_REGION), else boto3's AWS_DEFAULT_REGION."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
