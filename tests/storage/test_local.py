"""The local-directory backend."""

from handler.storage import LocalStorage, prune
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
