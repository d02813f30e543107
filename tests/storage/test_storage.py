"""Both storage backends behind the one interface, and the file cap."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import httpx
import pytest
from fastapi.testclient import TestClient

from handler.filenames import new_filename
from handler.storage import LocalFile, LocalStorage, RemoteFile, S3Storage, Storage, StorageError, prune

START = datetime(2025, 5, 28, 13, 42, 11, tzinfo=UTC)


def fill(storage: Storage, count: int) -> list[str]:
    """`count` files one minute apart, oldest first."""
    names = [new_filename(START + timedelta(minutes=i)) for i in range(count)]
    for name in names:
        storage.save(name, b"RIFF" + name.encode(), {"prompt": name})
    return names


def test_saved_file_is_listed_and_downloadable(storage: Storage) -> None:
    [name] = fill(storage, 1)
    [listed] = storage.list_files()
    assert listed.filename == name
    assert listed.size_bytes == len(b"RIFF" + name.encode())
    assert listed.created_at == START
    target = storage.download(name)
    if isinstance(target, LocalFile):
        assert target.path.read_bytes() == b"RIFF" + name.encode()
    else:
        assert isinstance(target, RemoteFile)
        assert httpx.get(target.url).content == b"RIFF" + name.encode()


def test_missing_file_downloads_as_none(storage: Storage) -> None:
    assert storage.download(new_filename(START)) is None


def test_s3_download_matches_the_exact_key_only(s3_storage: S3Storage, s3_bucket: str) -> None:
    name = new_filename(START)
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"generated/{name}.partial", Body=b"x")
    assert s3_storage.download(name) is None
    s3_storage.save(name, b"RIFF", {})
    assert isinstance(s3_storage.download(name), RemoteFile)


def test_listing_is_newest_first_even_within_one_second(storage: Storage) -> None:
    names = [new_filename(START + timedelta(milliseconds=i)) for i in (0, 1, 2, 400, 999)]
    for name in reversed(names):
        storage.save(name, b"x", {})
    assert [f.filename for f in storage.list_files()] == names[::-1]


def test_prune_deletes_the_oldest_in_one_batch(storage: Storage) -> None:
    names = fill(storage, 5)
    assert prune(storage, keep=3) == names[:2][::-1]
    assert [f.filename for f in storage.list_files()] == names[2:][::-1]
    assert prune(storage, keep=3) == []


def test_delete_removes_the_sidecar_too(local_storage: LocalStorage) -> None:
    [name] = fill(local_storage, 1)
    local_storage.delete([name])
    assert list(local_storage.directory.iterdir()) == []


def test_s3_delete_removes_the_sidecar_too(s3_storage: S3Storage, s3_objects: Callable[[], list[str]]) -> None:
    [name] = fill(s3_storage, 1)
    assert len(s3_objects()) == 2
    s3_storage.delete([name])
    assert s3_objects() == []


def test_local_write_leaves_no_temporary_files(local_storage: LocalStorage) -> None:
    fill(local_storage, 3)
    assert not [p for p in local_storage.directory.iterdir() if p.name.startswith(".tmp")]


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
    from handler.storage import s3_client

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_REGION", "ap-southeast-2")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    url = urlparse(s3_client().generate_presigned_url("get_object", Params={"Bucket": "my-bucket", "Key": "k"}))
    assert url.hostname == "my-bucket.s3.ap-southeast-2.amazonaws.com"
    assert "ap-southeast-2" in parse_qs(url.query)["X-Amz-Credential"][0]


def test_unreachable_s3_raises_storage_error(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from handler.storage import s3_client

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    storage = S3Storage(s3_client(), "bucket")
    with pytest.raises(StorageError):
        storage.list_files()
    with pytest.raises(StorageError):
        storage.save(new_filename(START), b"x", {})
    with pytest.raises(StorageError):
        storage.download(new_filename(START))


def test_cap_keeps_the_newest_100_after_two_more_generations(client: TestClient, storage: Storage) -> None:
    older = fill(storage, 100)
    created: list[Any] = [client.post("/generate/", json={"text": "rain", "duration": 1}).json() for _ in range(2)]
    new = [body["file_url"].removeprefix("/files/") for body in created]
    remaining = [f.filename for f in storage.list_files()]
    assert len(remaining) == 100
    assert set(older[:2]).isdisjoint(remaining)
    assert remaining == new[::-1] + older[2:][::-1]
    assert storage.download(older[0]) is None


def test_job_records_round_trip_and_are_pruned_with_the_files(storage: Storage) -> None:
    job_ids = [new_filename(START + timedelta(minutes=i)).removesuffix(".wav") for i in range(4)]
    for job_id in job_ids:
        storage.put_job(job_id, {"job_id": job_id, "text": "雨"})
    assert storage.get_job(job_ids[0]) == {"job_id": job_ids[0], "text": "雨"}
    assert storage.get_job("gen_20990101_000000_00000000") is None
    prune(storage, keep=2)
    assert sorted(storage.list_jobs()) == job_ids[2:]
    assert storage.list_files() == []


def test_names_with_impossible_dates_are_not_files(local_storage: LocalStorage) -> None:
    [name] = fill(local_storage, 1)
    (local_storage.directory / "gen_20251399_999999_abcdef12.wav").write_bytes(b"x")
    assert [f.filename for f in local_storage.list_files()] == [name]
    assert prune(local_storage, keep=1) == []


def test_prune_never_deletes_the_file_just_saved(storage: Storage) -> None:
    older_name_saved_last, *others = fill(storage, 3)
    assert prune(storage, keep=2, protect=older_name_saved_last) == [others[0]]
    assert {f.filename for f in storage.list_files()} == {older_name_saved_last, others[1]}


def test_prune_drops_the_job_records_of_the_files_it_deletes(storage: Storage) -> None:
    names = fill(storage, 3)
    for name in names:
        storage.put_job(name.removesuffix(".wav"), {"job_id": name})
    prune(storage, keep=2)
    assert sorted(storage.list_jobs()) == [name.removesuffix(".wav") for name in names[1:]]
