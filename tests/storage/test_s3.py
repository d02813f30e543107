"""The S3 backend, against moto's S3 server."""

import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlparse

import boto3
import httpx
import pytest

from handler.app import storage_from_settings
from handler.audio.output import AudioFormat
from handler.filenames import new_filename
from handler.musicgen.generator import MusicgenGenerator
from handler.settings import Settings
from handler.storage import RemoteFile, S3Storage, StorageError, metadata_name, s3_client
from tests.support.app import serve
from tests.support.s3 import StalledServer
from tests.support.storage import START, fill


def test_s3_download_matches_the_exact_key_only(s3_storage: S3Storage, s3_bucket: str) -> None:
    name = new_filename(START)
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"generated/{name}.partial", Body=b"x")
    assert s3_storage.download(name) is None
    s3_storage.save(name, b"RIFF", {})
    assert isinstance(s3_storage.download(name), RemoteFile)


def test_s3_delete_removes_the_sidecar_too(s3_storage: S3Storage, s3_objects: Callable[[], list[str]]) -> None:
    [name] = fill(s3_storage, 1)
    assert len(s3_objects()) == 2
    s3_storage.delete([name])
    assert s3_objects() == []


def test_s3_presigned_url_is_regional_attachment_and_short_lived(s3_storage: S3Storage) -> None:
    [name] = fill(s3_storage, 1)
    target = s3_storage.download(name)
    assert isinstance(target, RemoteFile)
    query = parse_qs(urlparse(target.url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert "/eu-west-1/s3/aws4_request" in query["X-Amz-Credential"][0]
    assert query["X-Amz-Expires"] == ["300"]
    assert query["response-content-type"] == ["audio/wav"]
    assert query["response-content-disposition"] == [f'attachment; filename="{name}"']
    response = httpx.get(target.url)
    assert response.status_code == 200
    assert response.headers["content-disposition"] == f'attachment; filename="{name}"'


def test_s3_outside_us_east_1_without_endpoint_override_uses_the_regional_host(
    aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_REGION", "ap-southeast-2")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    url = urlparse(s3_client().generate_presigned_url("get_object", Params={"Bucket": "my-bucket", "Key": "k"}))
    assert url.hostname == "my-bucket.s3.ap-southeast-2.amazonaws.com"
    assert "ap-southeast-2" in parse_qs(url.query)["X-Amz-Credential"][0]


def test_download_origin_on_aws_is_the_buckets_regional_host(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The origin a page reading downloads must be allowed to connect to; signing asks S3 nothing."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_REGION", "ap-southeast-2")
    storage = S3Storage(s3_client(), "my-bucket", "generated/")
    assert storage.download_origin == "https://my-bucket.s3.ap-southeast-2.amazonaws.com"


def test_download_origin_that_cannot_be_signed_is_a_storage_error(aws_env: str) -> None:
    with pytest.raises(StorageError):
        _ = S3Storage(s3_client(), "not/a/bucket").download_origin


def test_unreachable_s3_raises_storage_error(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    storage = S3Storage(s3_client(), "bucket")
    with pytest.raises(StorageError):
        storage.list_files()
    with pytest.raises(StorageError):
        storage.save(new_filename(START), b"x", {})
    with pytest.raises(StorageError):
        storage.download(new_filename(START))


@pytest.mark.parametrize("audio_format", list(AudioFormat))
def test_s3_objects_and_downloads_carry_the_formats_content_type(
    s3_storage: S3Storage, s3_bucket: str, audio_format: AudioFormat
) -> None:
    [name] = fill(s3_storage, 1, (audio_format,))
    head = boto3.client("s3").head_object(Bucket=s3_bucket, Key=f"generated/{name}")
    assert head["ContentType"] == audio_format.media_type
    target = s3_storage.download(name)
    assert isinstance(target, RemoteFile)
    assert parse_qs(urlparse(target.url).query)["response-content-type"] == [audio_format.media_type]
    assert httpx.get(target.url).headers["content-type"] == audio_format.media_type


def test_s3_sidecar_that_is_not_a_json_object_reads_as_missing(s3_storage: S3Storage, s3_bucket: str) -> None:
    names = fill(s3_storage, 2)
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"generated/{metadata_name(names[0])}", Body=b"{truncated")
    assert s3_storage.read_metadata(names) == {names[1]: {"prompt": names[1]}}


def test_s3_read_metadata_and_stat_fail_as_storage_errors(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    storage = S3Storage(s3_client(), "bucket")
    with pytest.raises(StorageError):
        storage.read_metadata([new_filename(START)])
    with pytest.raises(StorageError):
        storage.stat(new_filename(START))


@pytest.fixture
def stalled_s3(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[StalledServer]:
    server = StalledServer()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint)
    yield server
    server.close()


def test_a_stalled_s3_ends_the_call_with_a_storage_error_after_its_attempts(stalled_s3: StalledServer) -> None:
    storage = S3Storage(s3_client(connect_timeout_s=1, read_timeout_s=0.5, max_attempts=2), "bucket")
    started = time.monotonic()
    with pytest.raises(StorageError):
        storage.list_files()
    assert time.monotonic() - started < 30  # ended by the read timeout, not botocore's 60 s default
    assert stalled_s3.connections == 2  # the standard retry mode tried once more


def test_a_stalled_s3_answers_503_through_the_api(
    stalled_s3: StalledServer, settings: Settings, generator: MusicgenGenerator
) -> None:
    stalled = settings.model_copy(
        update={"s3_bucket": "bucket", "boto_read_timeout_seconds": 0.5, "boto_max_attempts": 1}
    )
    with serve(stalled, storage_from_settings(stalled), generator) as client:
        response = client.get("/files/")
    assert response.status_code == 503
    assert response.json() == {"detail": "Storage unavailable"}
