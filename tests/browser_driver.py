"""Headless Chromium for the browser tests, tied to the test process: it dies when we die.

chromedriver is started with the parent-death `preexec_fn` of `tesaiot_data.demo.tied_process`,
so the kernel sends it SIGTERM when the test process ends, even by SIGKILL. Chromium is
chromedriver's child, not ours, and outlives a chromedriver that dies: it is therefore
driven over `--remote-debugging-pipe`, and a Chromium whose DevTools pipe closes exits.

Run as `python -m tests.browser_driver PROFILE` (the test of that tie does): starts the browser
with that profile folder, prints "ready" and waits to be killed.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tesaiot_data.demo.tied_process import die_with_parent_preexec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

#: The browser window of the tests and of docs/dashboard.png: (width, height) in CSS pixels.
WINDOW = (1400, 1000)


def start_chromium(*, profile: Path, window: tuple[int, int] = WINDOW) -> Any:
    """Start headless Chromium through chromedriver, both ending with this process.

    Args:
        profile: Chromium's user data folder (the tie's test finds the processes by it).
        window: The window's width and height in pixels.

    Returns:
        The selenium `webdriver.Chrome`, its console log kept; `quit()` it when done.

    Raises:
        RuntimeError: chromium or chromedriver is not on PATH.
    """
    from selenium import webdriver  # noqa: PLC0415  (the browser tests skip without it)
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    if CHROMIUM is None or CHROMEDRIVER is None:
        raise RuntimeError("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={window[0]},{window[1]}",
        f"--user-data-dir={profile}",
        # Chromium exits when chromedriver's end of the pipe closes (a port would keep it up).
        "--remote-debugging-pipe",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, popen_kw={"preexec_fn": die_with_parent_preexec()})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_script_timeout(30)
    # --window-size is the outer size; the page (and a screenshot) gets `window` itself.
    outer, inner = driver.execute_script(
        "return [[window.outerWidth, window.outerHeight], [window.innerWidth, window.innerHeight]];"
    )
    driver.set_window_size(window[0] + outer[0] - inner[0], window[1] + outer[1] - inner[1])
    return driver


def processes_using(marker: str) -> list[int]:
    """Process ids (Linux, from /proc) whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if marker.encode() in command:
            found.append(int(entry.name))
    return found


def command_line(pid: int) -> str:
    """The command line of process `pid` (Linux), arguments joined by spaces; "" if gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """Process ids (Linux) whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether process `pid` runs (Linux): neither gone nor a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


if __name__ == "__main__":
    browser = start_chromium(profile=Path(sys.argv[1]))
    browser.get("data:text/html,<title>tied</title>")
    print("ready", flush=True)
    time.sleep(600)  # killed by the test long before
