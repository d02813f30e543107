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

from handler.filenames import created_at, is_valid_filename

logger = logging.getLogger(__name__)

WAV_CONTENT_TYPE = "audio/wav"


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


def metadata_name(filename: str) -> str:
    """The sidecar that keeps a file's prompt and parameters."""
    return filename.removesuffix(".wav") + ".json"


def newest_first(files: list[StoredFile]) -> list[StoredFile]:
    """Files ordered newest first; generated names sort in creation order."""
    return sorted(files, key=lambda f: f.filename, reverse=True)


def prune(storage: Storage, keep: int) -> list[str]:
    """Delete all but the newest `keep` files in one batch; returns the names deleted."""
    excess = [f.filename for f in newest_first(storage.list_files())[keep:]]
    if excess:
        storage.delete(excess)
    return excess


class LocalStorage:
    """Files in a local directory; each write is atomic (temporary file, then rename)."""

    backend = "local"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, filename: str, data: bytes, metadata: Mapping[str, Any]) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write_atomic(metadata_name(filename), json.dumps(metadata, ensure_ascii=False).encode())
            self._write_atomic(filename, data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._remove(metadata_name(filename))
            raise StorageError("could not write to local storage") from exc

    def list_files(self) -> list[StoredFile]:
        if not self.directory.is_dir():
            return []
        files = []
        for entry in os.scandir(self.directory):
            if is_valid_filename(entry.name) and entry.is_file():
                files.append(StoredFile(entry.name, entry.stat().st_size, created_at(entry.name)))
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

    def _write_atomic(self, name: str, data: bytes) -> None:
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, self.directory / name)
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
        from botocore.exceptions import BotoCoreError, ClientError

        sidecar = self._key(metadata_name(filename))
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=sidecar,
                Body=json.dumps(metadata, ensure_ascii=False).encode(),
                ContentType="application/json; charset=utf-8",
            )
            self.client.put_object(Bucket=self.bucket, Key=self._key(filename), Body=data, ContentType=WAV_CONTENT_TYPE)
        except (BotoCoreError, ClientError) as exc:
            with contextlib.suppress(BotoCoreError, ClientError):
                self.client.delete_object(Bucket=self.bucket, Key=sidecar)
            raise StorageError("could not write to S3") from exc

    def list_files(self) -> list[StoredFile]:
        from botocore.exceptions import BotoCoreError, ClientError

        files = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self.prefix) :]
                    if is_valid_filename(name):
                        files.append(StoredFile(name, int(obj["Size"]), created_at(name)))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError("could not list S3 objects") from exc
        return newest_first(files)

    def download(self, filename: str) -> Download | None:
        key = self._key(filename)
        if not self._exists(key):
            return None
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
        return RemoteFile(url)

    def delete(self, filenames: Sequence[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        keys = [self._key(name) for f in filenames for name in (f, metadata_name(f))]
        try:
            for start in range(0, len(keys), 1000):
                batch = [{"Key": key} for key in keys[start : start + 1000]]
                result = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                if result.get("Errors"):
                    raise StorageError(f"S3 refused to delete {len(result['Errors'])} objects")
        except (BotoCoreError, ClientError) as exc:
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
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1)
        except (BotoCoreError, ClientError) as exc:
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

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    config = Config(signature_version="s3v4", s3={"addressing_style": "virtual"})
    return boto3.client("s3", region_name=region, config=config)
