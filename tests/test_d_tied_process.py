"""Processes a notebook starts die with it (issue 17, section 3): `demo.popen_tied`.

A parent process starts a child with `popen_tied`, the test SIGKILLs the parent (as the
kernel's OOM killer or a crashed kernel would), and the child must be gone within a deadline.
Notebook 04's recorder service is checked the same way, with the notebook's own cells.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux")

# The parent: starts a long-lived child (from a thread that ends at once, as a widget's
# callback would), says its pid, then waits to be killed.
PARENT = """\
import json, sys, threading
import tesaiot_data.demo.tied_process as tied_process
from tesaiot_data.demo import popen_tied
if "--watchdog" in sys.argv:
    tied_process._USE_PDEATHSIG = False
children = []
thread = threading.Thread(
    target=lambda: children.append(
        popen_tied([sys.executable, "-c", "import time; time.sleep(600)"])
    )
)
thread.start()
thread.join()
child = children[0]
assert child.poll() is None  # alive after the thread that started it ended
print(json.dumps({"child": child.pid}), flush=True)
sys.stdin.read()
"""


def _gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie waiting for its new parent counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return state in ("Z", "X")


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids to kill at teardown if a test fails half-way."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)


def _start_parent(args: list[str], started: list[int]) -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen(
        args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    started.append(parent.pid)
    assert parent.stdout is not None
    line = ""
    while not line.startswith('{"child"'):  # the notebook's own output comes first
        line = parent.stdout.readline()
        assert line, f"the parent exited with {parent.wait(30)} before naming its child"
    child = int(json.loads(line)["child"])
    started.append(child)
    return parent, child


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(
            "pdeathsig", marks=pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux's")
        ),
        "watchdog",
    ],
)
def test_a_tied_child_dies_when_its_parent_is_killed(how: str, started: list[int]) -> None:
    args = [sys.executable, "-c", PARENT] + (["--watchdog"] if how == "watchdog" else [])
    parent, child = _start_parent(args, started)
    assert not _gone(child)
    parent.send_signal(signal.SIGKILL)
    assert parent.wait(10) == -signal.SIGKILL
    wait_for(lambda: _gone(child), timeout=15, message=f"child {child} outlived its parent")


def _notebook_cells(name: str) -> list[str]:
    notebook = json.loads((ROOT / "notebooks" / name).read_text())
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


@pytest.mark.broker
@pytest.mark.skipif(not LINUX, reason="the demo broker's Mosquitto runs here on Linux")
def test_notebook_04s_recorder_dies_with_a_killed_kernel(
    tmp_path: Path, started: list[int]
) -> None:
    # The notebook's cells up to the one that starts the recorder, run as a kernel would.
    cells = _notebook_cells("04_history_and_scale.ipynb")
    upto = next(i for i, source in enumerate(cells) if "recorder =" in source)
    script = tmp_path / "kernel.py"
    announce = 'print(json.dumps({"child": recorder.pid}), flush=True)\nsys.stdin.read()\n'
    script.write_text("import json, sys\n\n" + "\n\n".join(cells[: upto + 1]) + "\n\n" + announce)
    kernel, recorder = _start_parent([sys.executable, str(script)], started)
    assert not _gone(recorder)
    kernel.send_signal(signal.SIGKILL)  # no atexit, no last cell
    assert kernel.wait(10) == -signal.SIGKILL
    # SIGTERM lets the recorder write its last rows and disconnect first: seconds on a busy CI
    wait_for(lambda: _gone(recorder), timeout=60, message="the recorder outlived its kernel")
