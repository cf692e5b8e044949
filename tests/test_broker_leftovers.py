"""After a SIGKILL, the next LocalBroker removes the folders that dead brokers left (the token).

Every broker here lives in a temporary folder of the test's own (TMPDIR for the children,
`tempfile.tempdir` in this process), so that other brokers on the machine play no part.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tesaiot_data.demo.broker import LocalBroker
from tests.helpers import wait_for

pytestmark = pytest.mark.broker

BROKER_CHILD = Path(__file__).with_name("broker_child.py")
LINUX = sys.platform.startswith("linux")


def _gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


class Owner:
    """A process that starts a LocalBroker in `temp` and waits: `broker_child.py`."""

    def __init__(self, temp: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(BROKER_CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "TMPDIR": str(temp)},
        )
        assert self.process.stdout is not None
        started = json.loads(self.process.stdout.readline() or "null")
        assert started is not None, f"the owner exited with {self.process.wait(10)}"
        self.broker_pid = int(started["pid"])
        self.workdir = Path(started["workdir"])
        assert self.workdir.parent == temp

    def kill(self) -> None:
        """SIGKILL, as the kernel's OOM killer ends a notebook kernel."""
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(10) == -signal.SIGKILL
        wait_for(lambda: _gone(self.broker_pid), message="mosquitto outlived its owner")

    def end(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # it closes its broker and exits
            self.process.wait(30)
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def owners(temp: Path) -> Iterator[list[Owner]]:
    made: list[Owner] = []
    yield made
    for owner in made:
        owner.end()


@pytest.mark.skipif(not LINUX, reason="reads /proc to see that the killed broker is gone")
def test_the_next_broker_removes_what_a_killed_one_left(temp: Path, owners: list[Owner]) -> None:
    live, killed = Owner(temp), Owner(temp)
    owners += [live, killed]
    killed.kill()
    assert killed.workdir.is_dir(), "nothing removes it before the next broker"
    assert (killed.workdir / "dynsec.json").exists() or (killed.workdir / "passwd").exists()

    # Not ours to judge: a folder without an owner (one being made), a file, and a symlink
    # to a dead broker's folder elsewhere.
    in_making = temp / "tesaiot-broker-in-making"
    in_making.mkdir()
    a_file = temp / "tesaiot-broker-a-file"
    a_file.write_text("x")
    elsewhere = temp.parent / "elsewhere"
    shutil.copytree(killed.workdir, elsewhere)
    (temp / "tesaiot-broker-link").symlink_to(elsewhere)

    with LocalBroker() as broker:
        assert broker.workdir.parent == temp
        assert not killed.workdir.exists()
        assert live.workdir.is_dir(), "the live broker's folder was removed"
        assert broker.workdir.is_dir()
        assert in_making.is_dir()
        assert a_file.is_file()
        assert (elsewhere / "dynsec.json").exists() or (elsewhere / "passwd").exists()

        # A live broker of this very process keeps its folder when another one is made.
        with LocalBroker():
            assert broker.workdir.is_dir()
    assert not broker.workdir.exists()


@pytest.mark.skipif(not LINUX, reason="reads /proc to see that the killed broker is gone")
def test_a_broker_that_was_never_started_is_removed_too(temp: Path) -> None:
    # Killed between the folder and the start: no Mosquitto pid recorded, the owner's is.
    code = (
        "import os, signal\n"
        "from tesaiot_data.demo.broker import LocalBroker\n"
        "broker = LocalBroker()\n"
        "print(broker.workdir, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    left = Path(child.stdout.strip())
    assert left.is_dir()
    LocalBroker().close()
    assert not left.exists()
