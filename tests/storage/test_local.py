"""The local-directory backend."""

from handler.storage import LocalStorage, metadata_name, prune
from tests.support.storage import fill


def test_delete_removes_the_sidecar_too(local_storage: LocalStorage) -> None:
    [name] = fill(local_storage, 1)
    local_storage.delete([name])
    assert list(local_storage.directory.iterdir()) == []


def test_local_write_leaves_no_temporary_files(local_storage: LocalStorage) -> None:
    fill(local_storage, 3)
    assert not [p for p in local_storage.directory.iterdir() if p.name.startswith(".tmp")]


def test_names_with_impossible_dates_are_not_files(local_storage: LocalStorage) -> None:
    [name] = fill(local_storage, 1)
    (local_storage.directory / "gen_20251399_999999_abcdef12.wav").write_bytes(b"x")
    assert [f.filename for f in local_storage.list_files()] == [name]
    assert prune(local_storage, keep=1) == []


def test_a_sidecar_that_is_not_a_json_object_reads_as_missing(local_storage: LocalStorage) -> None:
    names = fill(local_storage, 3)
    (local_storage.directory / metadata_name(names[0])).write_bytes(b"{truncated")
    (local_storage.directory / metadata_name(names[1])).write_text("[1, 2]")
    assert local_storage.read_metadata(names) == {names[2]: {"prompt": names[2]}}


def test_a_directory_with_a_files_name_is_not_a_file(local_storage: LocalStorage) -> None:
    [name] = fill(local_storage, 1)
    local_storage.delete([name])
    (local_storage.directory / name).mkdir()
    assert local_storage.stat(name) is None
