"""Where generated files and job records live: a local directory or an S3 bucket, behind one interface."""

from handler.storage.base import (
    Download,
    LocalFile,
    RemoteFile,
    Storage,
    StorageError,
    StoredFile,
    metadata_name,
    prune,
)
from handler.storage.local import LocalStorage
from handler.storage.s3 import S3Storage, aws_client_config, aws_region, s3_client

__all__ = [
    "Download",
    "LocalFile",
    "LocalStorage",
    "RemoteFile",
    "S3Storage",
    "Storage",
    "StorageError",
    "StoredFile",
    "aws_client_config",
    "aws_region",
    "metadata_name",
    "prune",
    "s3_client",
]
