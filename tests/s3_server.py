"""A real S3 server for the object storage tests: moto's server mode on a free loopback port.

`s3_server` (session) starts `python -m moto.server` as a process, as a user would run MinIO;
`s3` (each test) points the standard variables at it (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`) and makes a fresh bucket, so the
package is reached only the way a user reaches a store. Without moto the tests skip with a
reason (`pip install -e '.[test]'` installs it).

Use it with `from tests.s3_server import s3, s3_server  # noqa: F401` in a test module.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs
import pytest

from tesaiot_data.demo.broker import free_port
from tests.helpers import wait_for

__all__ = ["S3", "s3", "s3_env", "s3_server", "s3_server_checking_credentials"]

_MISSING = "moto[server] is not installed (pip install -e '.[test]' brings it)"


@dataclass(frozen=True)
class S3:
    """One test's bucket on the server.

    Attributes:
        endpoint: `http://127.0.0.1:<port>`, as AWS_ENDPOINT_URL holds it.
        bucket: A fresh, empty bucket.
        filesystem: pyarrow's view of the server, to look at the objects directly.
    """

    endpoint: str
    bucket: str
    filesystem: pafs.S3FileSystem

    def url(self, key: str = "") -> str:
        """Return `s3://<bucket>/<key>`."""
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    def objects(self, prefix: str = "") -> list[str]:
        """Return every object's key under `prefix` in the bucket, hidden ones too, sorted."""
        selector = pafs.FileSelector(
            f"{self.bucket}/{prefix}".rstrip("/"), recursive=True, allow_not_found=True
        )
        infos = self.filesystem.get_file_info(selector)
        return sorted(
            info.path.removeprefix(f"{self.bucket}/")
            for info in infos
            if info.type == pafs.FileType.File
        )


def s3_env(endpoint: str) -> dict[str, str]:
    """The standard variables that point an S3 client at `endpoint` (moto takes any key)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "tesaiot-test",
        "AWS_SECRET_ACCESS_KEY": "tesaiot-test-secret",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server process; yields its endpoint URL."""
    yield from _moto_server(checks_credentials=False)


@pytest.fixture(scope="session")
def s3_server_checking_credentials() -> Iterator[str]:
    """A moto S3 server that checks credentials (it knows none): every request is refused."""
    yield from _moto_server(checks_credentials=True)


def _moto_server(*, checks_credentials: bool) -> Iterator[str]:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        pytest.skip(_MISSING)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    if checks_credentials:  # moto's IAM checks from the first request on
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"moto.server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_for(answers, timeout=30, period=0.1, message="moto.server did not answer")
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A fresh bucket on the server, and the standard variables pointing at it."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in s3_env(s3_server).items():
        monkeypatch.setenv(name, value)
    bucket = f"tesaiot-{secrets.token_hex(4)}"
    # The test's own look at the server; the package finds it through AWS_ENDPOINT_URL.
    filesystem = pafs.S3FileSystem(
        endpoint_override=s3_server.removeprefix("http://"),
        scheme="http",
        region="us-east-1",
        access_key="tesaiot-test",
        secret_key="tesaiot-test-secret",
        allow_bucket_creation=True,
        allow_bucket_deletion=True,
    )
    filesystem.create_dir(bucket)
    return S3(endpoint=s3_server, bucket=bucket, filesystem=filesystem)
