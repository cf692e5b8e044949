"""`tesaiot-data demo --env-out FILE` never destroys what the user has.

An existing FILE (the user's own `.env` with their platform token) is refused before anything
starts; the writer makes its temporary file exclusively, so a stale or planted `.FILE.tmp`
changes nothing; and the demo removes only the file it wrote.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tesaiot_data import demo
from tesaiot_data.cli import main
from tesaiot_data.cli.publishing import write_env_file
from tesaiot_data.errors import ConfigError
from tesaiot_data.settings import Settings
from tests.helpers import wait_for

USER_TEXT = "MQTT_API_TOKEN=tesa_mqtt_myorg_" + "U" * 32 + "\n"
DEMO_TOKEN = "tesa_mqtt_demo_" + "D" * 32


def _snapshot(path: Path) -> tuple[str, int, int, bool]:
    status = path.lstat()
    text = path.read_text() if path.is_file() else ""
    return text, status.st_mode, status.st_mtime_ns, path.is_symlink()


def _user_file(kind: str, folder: Path) -> tuple[Path, Path]:
    """What the user has at `--env-out`, and the file that holds their data."""
    mine = folder / "mine.env"
    mine.write_text(USER_TEXT)
    mine.chmod(0o600)
    target = folder / ".env"
    if kind == "file":
        mine.rename(target)
        return target, target
    if kind == "symlink":
        target.symlink_to(mine)
    elif kind == "dangling-symlink":
        target.symlink_to(folder / "nowhere")
    elif kind == "folder":
        target.mkdir()
    return target, mine


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    ca = tmp_path / "ca.pem"
    ca.write_text("not needed to write the file\n")
    return Settings(token=DEMO_TOKEN, broker_url="wss://127.0.0.1:8884/mqtt", ca_certs=ca)


@pytest.fixture
def no_umask() -> Iterator[None]:
    """The loosest umask: the file's mode must not depend on it."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize("kind", ["file", "symlink", "dangling-symlink", "folder"])
def test_an_existing_env_out_is_refused_before_anything_starts(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, data = _user_file(kind, tmp_path)
    before = {path: _snapshot(path) for path in (target, data) if os.path.lexists(path)}
    status = main(
        ["demo", "--duration", "2s", "--env-out", str(target), "--out", str(tmp_path / "d.pq")],
    )
    errors = capsys.readouterr().err
    assert status == 1
    assert errors.startswith(f"error: {target} exists")
    assert "hint:" in errors
    assert "Traceback" not in errors
    assert {path: _snapshot(path) for path in before} == before
    assert demo.current() is None, "the demo started"
    assert not (tmp_path / "d.pq").exists()


def test_the_env_file_is_new_and_its_owners_only(
    tmp_path: Path, settings: Settings, no_umask: None
) -> None:
    path = tmp_path / "demo.env"
    written = write_env_file(path, settings)
    assert path.lstat().st_ino == written.st_ino
    assert not path.is_symlink()
    assert path.stat().st_mode & 0o777 == 0o600
    assert f"MQTT_API_TOKEN={DEMO_TOKEN}" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.pem", "demo.env"]


def test_a_stale_temporary_file_changes_nothing(
    tmp_path: Path, settings: Settings, no_umask: None
) -> None:
    stale = tmp_path / ".demo.env.tmp"
    stale.write_text("left by a crash\n")
    stale.chmod(0o644)
    before = _snapshot(stale)
    path = tmp_path / "demo.env"
    write_env_file(path, settings)
    assert path.stat().st_mode & 0o777 == 0o600
    assert _snapshot(stale) == before


def test_a_planted_symlink_at_the_temporary_name_is_not_followed(
    tmp_path: Path, settings: Settings
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "victim.txt"
    victim.write_text("someone else's\n")
    victim.chmod(0o644)
    before = _snapshot(victim)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / ".demo.env.tmp").symlink_to(victim)
    path = folder / "demo.env"
    write_env_file(path, settings)
    assert _snapshot(victim) == before
    assert not path.is_symlink()
    assert path.stat().st_mode & 0o777 == 0o600
    assert DEMO_TOKEN in path.read_text()


@pytest.mark.parametrize("kind", ["file", "symlink", "dangling-symlink"])
def test_the_writer_never_replaces_what_appeared_meanwhile(
    kind: str, tmp_path: Path, settings: Settings
) -> None:
    # The demo checks before it starts; a file made between that check and the write stays.
    target, data = _user_file(kind, tmp_path)
    before = {path: _snapshot(path) for path in (target, data) if os.path.lexists(path)}
    with pytest.raises(ConfigError, match="exists"):
        write_env_file(target, settings)
    assert {path: _snapshot(path) for path in before} == before
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file stayed"


@pytest.mark.broker
@pytest.mark.slow
def test_the_demo_removes_only_the_env_file_it_wrote(tmp_path: Path) -> None:
    # The user puts their own file at the path while the demo runs: the demo leaves it.
    path = tmp_path / "demo.env"
    replaced = threading.Event()

    def replace_it() -> None:
        wait_for(path.exists, timeout=60, message="the demo's env file")
        mine = tmp_path / "mine.env"
        mine.write_text(USER_TEXT)
        os.replace(mine, path)
        replaced.set()

    worker = threading.Thread(target=replace_it)
    worker.start()
    try:
        status = main(
            [
                "demo",
                "--duration",
                "4s",
                "--env-out",
                str(path),
                "--out",
                str(tmp_path / "d.parquet"),
            ],
            out=io.StringIO(),
        )
    finally:
        worker.join()
    assert replaced.is_set()
    assert status == 0
    assert path.read_text() == USER_TEXT
