"""What every storage backend does alike: each test here runs once per backend."""

from datetime import timedelta
from typing import Any, cast

import httpx
import pytest
from fastapi.testclient import TestClient

from handler.audio.output import AudioFormat
from handler.filenames import job_id_for, new_filename
from handler.storage import LocalFile, RemoteFile, Storage, StoredFile, metadata_name, prune
from tests.support.storage import START, ListedOnce, after_the_latest_save, fill

EVERY_FORMAT = tuple(AudioFormat)


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


def test_prune_keeps_the_files_saved_last_though_their_names_sort_older(storage: Storage) -> None:
    others = fill(storage, 3)
    after_the_latest_save(storage)
    # A long request's file: named when it arrived, before the others were made, saved after them.
    long_request = new_filename(START - timedelta(minutes=1))
    storage.save(long_request, b"RIFF", {})
    assert sorted(prune(storage, keep=2)) == sorted(others[:2])
    assert {f.filename for f in storage.list_files()} == {long_request, others[2]}


def test_two_instances_pruning_at_once_keep_exactly_the_cap(storage: Storage) -> None:
    older = fill(storage, 3)
    after_the_latest_save(storage)
    # Each instance has just saved one file named before the others, and both list before either deletes.
    just_saved = [new_filename(START - timedelta(minutes=i)) for i in (1, 2)]
    for name in just_saved:
        storage.save(name, b"RIFF", {})
    first, second = ListedOnce(storage), ListedOnce(storage)
    prune(cast(Storage, first), keep=3)
    prune(cast(Storage, second), keep=3)
    assert {f.filename for f in storage.list_files()} == {*just_saved, older[2]}


def test_job_records_round_trip(storage: Storage) -> None:
    job_id = new_filename(START).removesuffix(".wav")
    storage.put_job(job_id, {"job_id": job_id, "text": "雨"})
    assert storage.get_job(job_id) == {"job_id": job_id, "text": "雨"}
    assert storage.get_job("gen_20990101_000000_00000000") is None
    assert storage.list_jobs() == [job_id]
    storage.delete_jobs([job_id])
    assert storage.list_jobs() == []


def test_cap_keeps_the_newest_100_after_two_more_generations(client: TestClient, storage: Storage) -> None:
    older = fill(storage, 100)
    created: list[Any] = [client.post("/generate/", json={"text": "rain", "duration": 1}).json() for _ in range(2)]
    new = [body["file_url"].removeprefix("/files/") for body in created]
    remaining = [f.filename for f in storage.list_files()]
    assert len(remaining) == 100
    assert set(older[:2]).isdisjoint(remaining)
    assert remaining == new[::-1] + older[2:][::-1]
    assert storage.download(older[0]) is None


def test_files_of_every_format_list_together_newest_first(storage: Storage) -> None:
    names = fill(storage, 8, EVERY_FORMAT)
    assert [f.filename for f in storage.list_files()] == names[::-1]
    assert {name.rsplit(".", 1)[1] for name in names} == {"wav", "flac", "ogg", "mp3"}


def test_the_cap_counts_files_of_every_format_together(storage: Storage) -> None:
    names = fill(storage, 6, EVERY_FORMAT)
    assert prune(storage, keep=4) == names[:2][::-1]
    assert [f.filename for f in storage.list_files()] == names[2:][::-1]
    assert storage.read_metadata(names[:2]) == {}


def test_stat_is_the_listing_entry_of_one_file(storage: Storage) -> None:
    names = fill(storage, 2, (AudioFormat.FLAC, AudioFormat.MP3))
    for name in names:
        [listed] = [f for f in storage.list_files() if f.filename == name]
        assert (
            storage.stat(name)
            == listed
            == StoredFile(name, len(b"RIFF" + name.encode()), listed.created_at, listed.saved_at)
        )
    assert storage.stat(new_filename(START, AudioFormat.OGG)) is None
    assert storage.stat(names[0].replace(".flac", ".wav")) is None


def test_read_metadata_returns_the_sidecars_that_exist(storage: Storage) -> None:
    with_sidecars = fill(storage, 3, EVERY_FORMAT)
    without = new_filename(START + timedelta(hours=1), AudioFormat.OGG)
    storage.save(without, b"OggS", {})
    sidecars = storage.read_metadata([*with_sidecars, without, new_filename(START, AudioFormat.MP3)])
    assert sidecars == {name: {"prompt": name} for name in with_sidecars} | {without: {}}
    assert storage.read_metadata([]) == {}


@pytest.mark.parametrize("audio_format", EVERY_FORMAT)
def test_a_sidecar_is_named_after_its_file_whatever_the_format(audio_format: AudioFormat) -> None:
    name = new_filename(START, audio_format)
    assert metadata_name(name) == f"{job_id_for(name)}.json"


def test_delete_removes_files_of_any_format_and_their_sidecars(storage: Storage) -> None:
    names = fill(storage, 4, EVERY_FORMAT)
    storage.delete(names[1:3])
    assert [f.filename for f in storage.list_files()] == [names[3], names[0]]
    assert set(storage.read_metadata(names)) == {names[0], names[3]}
    assert storage.download(names[1]) is None


def test_download_origin_is_where_downloads_point(storage: Storage) -> None:
    [name] = fill(storage, 1)
    target = storage.download(name)
    if isinstance(target, LocalFile):
        assert storage.download_origin is None
    else:
        assert isinstance(target, RemoteFile)
        parts = httpx.URL(target.url)
        assert storage.download_origin == f"{parts.scheme}://{parts.netloc.decode()}"
