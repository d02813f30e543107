"""Settings from the environment."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from handler.settings import Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MODEL_ID", "STORAGE_DIR", "S3_BUCKET", "S3_PREFIX", "MAX_FILES"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.model_id == "facebook/musicgen-small"
    assert settings.storage_dir == Path("generated")
    assert settings.s3_bucket is None
    assert settings.s3_prefix == ""
    assert settings.max_files == 100


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_ID", "/opt/models/musicgen-small")
    monkeypatch.setenv("S3_BUCKET", "music")
    monkeypatch.setenv("S3_PREFIX", "/generated")
    monkeypatch.setenv("MAX_FILES", "7")
    settings = Settings()
    assert (settings.model_id, settings.s3_bucket, settings.s3_prefix, settings.max_files) == (
        "/opt/models/musicgen-small",
        "music",
        "generated/",
        7,
    )


def test_max_duration_is_the_contracts_30_s_unless_set_up_to_300(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAX_DURATION", raising=False)
    assert Settings().max_duration == 30
    monkeypatch.setenv("MAX_DURATION", "300")
    assert Settings().max_duration == 300
    for value in ("0", "301"):
        monkeypatch.setenv("MAX_DURATION", value)
        with pytest.raises(ValidationError):
            Settings()


def test_blank_bucket_means_local_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_BUCKET", "")
    assert Settings().s3_bucket is None


def test_invalid_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_FILES", "0")
    with pytest.raises(ValueError, match="max_files"):
        Settings()
