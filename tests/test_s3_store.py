"""Paths and URLs: local paths stay paths; a store's errors name the URL, never a secret."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tesaiot_data.errors import ConfigError, StorageError
from tesaiot_data.files.compaction import compact_dataset
from tesaiot_data.files.store import StorePath, location
from tesaiot_data.readers.disk import load_recording
from tesaiot_data.sinks.dataset import DatasetWriter
from tesaiot_data.sinks.recorder import Recorder
from tests.s3_server import (  # noqa: F401  (fixtures)
    S3,
    s3,
    s3_env,
    s3_server,
    s3_server_checking_credentials,
)

SECRET = "do-not-print-me-0123456789"


@pytest.mark.parametrize("path", ["data/telemetry", "/tmp/x.parquet", "C:/data/x.parquet"])
def test_a_local_path_stays_a_path(path: str) -> None:
    assert location(path) == Path(path)
    assert location(Path(path)) == Path(path)


def test_a_file_url_is_a_local_path() -> None:
    assert location("file:///tmp/telemetry") == Path("/tmp/telemetry")


def test_an_unknown_scheme_is_a_config_error_naming_the_url_without_secrets() -> None:
    with pytest.raises(ConfigError, match=r"nope://bucket/telemetry") as caught:
        location(f"nope://user:{SECRET}@bucket/telemetry?secret_key={SECRET}")
    assert SECRET not in str(caught.value)
    assert caught.value.hint is not None
    assert "s3://" in caught.value.hint


def test_a_bad_url_option_is_a_config_error_without_secrets() -> None:
    with pytest.raises(ConfigError, match=r"^s3://bucket/telemetry is not a URL") as caught:
        location(f"s3://user:{SECRET}@bucket/telemetry?password={SECRET}")
    assert SECRET not in str(caught.value)


def test_the_old_failure_a_local_folder_named_s3_is_not_made(
    s3: S3,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The issue: Collector(snapshot_dir="s3://...") wrote a local folder named "s3:".
    monkeypatch.chdir(tmp_path)
    writer = DatasetWriter(s3.url("telemetry"))
    writer.close()
    assert not (tmp_path / "s3:").exists()
    assert isinstance(writer.path, StorePath)
    assert str(writer.path) == s3.url("telemetry")


def test_a_url_prints_without_its_query_or_user(s3: S3) -> None:  # noqa: F811
    path = location(f"s3://user:{SECRET}@{s3.bucket}/x.parquet?region=us-east-1")
    assert str(path) == s3.url("x.parquet")


def test_a_missing_bucket_is_a_storage_error_for_writers_and_readers(s3: S3) -> None:  # noqa: F811
    url = "s3://no-such-bucket-here/telemetry"
    for act in (
        lambda: DatasetWriter(url),
        lambda: Recorder(url + "/x.parquet").stop(),
        lambda: load_recording(url),
        lambda: compact_dataset(url),
    ):
        with pytest.raises(StorageError, match="no-such-bucket-here") as caught:
            act()
        assert "does not exist" in str(caught.value)
        assert caught.value.url.startswith("s3://no-such-bucket-here")
        assert caught.value.hint is not None


def test_an_endpoint_that_does_not_answer_is_a_storage_error_naming_it(
    s3: S3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tesaiot_data.demo.broker import free_port  # noqa: PLC0415

    nowhere = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", nowhere)
    started = time.monotonic()
    with pytest.raises(StorageError, match="does not answer") as caught:
        DatasetWriter(s3.url("telemetry"))
    assert nowhere in str(caught.value)
    assert "AWS_ENDPOINT_URL" in (caught.value.hint or "")
    assert time.monotonic() - started < 60


def test_refused_credentials_are_a_storage_error_without_the_secret(
    s3_server_checking_credentials: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in s3_env(s3_server_checking_credentials).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    url = "s3://some-bucket/telemetry"
    for act in (lambda: DatasetWriter(url), lambda: load_recording(url)):
        with pytest.raises(StorageError, match="refused the credentials") as caught:
            act()
        assert str(caught.value).startswith(url)
        assert SECRET not in str(caught.value)
        assert "AWS_ACCESS_KEY_ID" in (caught.value.hint or "")
