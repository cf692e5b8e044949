"""The dashboard in a real JupyterLab, driven by headless Chromium through Selenium.

One module, one JupyterLab: notebook 01 (the demo broker, its fleet and a dashboard) runs in
it up to the dashboard, in a 1400x1000 window with the file browser open; then the chart must
draw, take new points, zoom and keep its zoom while data arrive; the layout must keep the
controls above the chart and the device x metric grid short enough that health and alerts
show in the first 1,000 pixels; a text metric shows its states; and the browser console must
stay free of errors. The rest of the notebook runs last (it stops the demo).

Chromium, chromedriver and JupyterLab die with the test process, even when it is SIGKILLed
(`tests/browser_driver.py`, `die_with_parent_preexec`), and the lab fixture checks that no
server or kernel of its own is left when it ends.

Skipped where Chromium, chromedriver or selenium are missing. A screenshot of the window is
saved beside the test's files; `TESAIOT_SCREENSHOT=1` also saves it as docs/dashboard.png (the
README's picture).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tesaiot_data.demo.broker import free_port
from tesaiot_data.demo.tied_process import die_with_parent_preexec
from tests.browser_driver import (
    CHROMEDRIVER,
    CHROMIUM,
    WINDOW,
    alive,
    children,
    command_line,
    processes_using,
    start_chromium,
)
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
LINUX = Path("/proc/self/cmdline").is_file()

try:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from tests.browser_layout import (
        FILE_BROWSER_SHOWN,
        OPEN_FILE_BROWSER,
        chart_state,
        check_layout,
        check_metric_switch,
        over,
        take_screenshot,
        until,
    )

    HAVE_SELENIUM = True
except ImportError:  # pragma: no cover - the skip below says what to install
    HAVE_SELENIUM = False

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not HAVE_SELENIUM, reason="selenium is not installed (pip install selenium)"
    ),
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="no chromium/chromedriver (Debian: apt-get install chromium chromium-driver)",
    ),
]

NOTEBOOK = "01_live_quickstart.ipynb"
LAB_START_TIMEOUT = 90.0  # s: JupyterLab takes 20-40 s to start on a busy 2-core machine


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A JupyterLab on loopback serving a copy of notebooks/; yields its URL with token."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    # No "get notified about Jupyter news?" toast over the page (and no request for news).
    settings = root / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port = free_port()
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
        "PYTHONPATH": str(ROOT),
    }
    log = (root / "lab.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root / 'notebooks'}",
            f"--LabServerApp.workspaces_dir={root / 'workspaces'}",
            f"--LabServerApp.user_settings_dir={root / 'settings'}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--ServerApp.allow_root=True",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
        preexec_fn=die_with_parent_preexec(),  # noqa: PLW1509  (dies with the test run)
    )
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited: {(root / 'lab.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    try:
        wait_for(answers, timeout=LAB_START_TIMEOUT, period=0.5, message="JupyterLab answers")
        yield f"{base}/lab/tree/{NOTEBOOK}?token={token}&reset"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        if LINUX:
            # Neither the server nor a kernel it started (their command lines name the lab's
            # folder: root_dir, the runtime dir of the kernel's connection file) is left.
            wait_for(
                lambda: not processes_using(str(root)),
                timeout=30,
                period=0.2,
                message=f"JupyterLab and its kernels end: {processes_using(str(root))} left",
            )


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium in a 1400x1000 window, its console log kept; dies with the test."""
    driver = start_chromium(profile=tmp_path_factory.mktemp("chromium"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.skipif(not LINUX, reason="finds the browser's processes in /proc")
def test_browser_dies_with_the_test_process(tmp_path: Path) -> None:
    """A SIGKILLed test process leaves neither chromedriver nor Chromium behind."""
    profile = tmp_path / "profile"
    out = tmp_path / "driver.out"
    with out.open("wb") as sink:
        owner = subprocess.Popen(
            [sys.executable, "-m", "tests.browser_driver", str(profile)],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        wait_for(
            lambda: b"ready" in out.read_bytes() or owner.poll() is not None,
            timeout=60,
            period=0.1,
            message="the browser starts",
        )
        assert owner.poll() is None, out.read_text()
        browser_processes = [pid for pid in processes_using(str(profile)) if pid != owner.pid]
        assert browser_processes, "no Chromium process uses the profile"
        driver = [pid for pid in children(owner.pid) if "chromedriver" in command_line(pid)]
        assert driver, "no chromedriver child"
    finally:
        owner.kill()
        owner.wait()

    def all_gone() -> bool:
        return not processes_using(str(profile)) and not any(alive(pid) for pid in driver)

    wait_for(
        all_gone,
        timeout=20,
        period=0.1,
        message="chromedriver and Chromium end with their owner",
    )


RUN_TO_DASHBOARD = """
const app = window.jupyterapp;
const panel = app.shell.currentWidget;
const cells = panel.content.widgets;
const dashboard = cells.findIndex(
  (c) => c.model.type === 'code' && c.model.sharedModel.getSource().includes('.dashboard('),
);
if (dashboard < 0) throw new Error('no cell makes a dashboard');
const after = dashboard;
panel.content.activeCellIndex = after + 1;
app.commands.execute('notebook:run-all-above');
return after + 1;
"""

RUN_THE_REST = """
const app = window.jupyterapp;
const panel = app.shell.currentWidget;
panel.content.activeCellIndex = arguments[0];
app.commands.execute('notebook:run-all-below');
return panel.content.widgets.length;
"""

NOTEBOOK_READY = """
const app = window.jupyterapp;
const panel = app && app.shell.currentWidget;
if (!panel || !panel.sessionContext || !panel.content) return false;
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
return Boolean(kernel && kernel.status === 'idle' && panel.content.widgets.length > 10);
"""

LAST_CELL_DONE = """
const cells = window.jupyterapp.shell.currentWidget.content.widgets;
const last = cells[cells.length - 1];
const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
return last.model.executionCount != null && kernel.status === 'idle';
"""

ERROR_OUTPUTS = """
const error = '[data-mime-type="application/vnd.jupyter.error"]';
return Array.from(document.querySelectorAll(error)).map((el) => el.textContent.slice(0, 500));
"""


def _severe(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_dashboard_in_jupyterlab(lab: str, browser: Any, tmp_path: Path) -> None:
    try:
        _check_dashboard(lab, browser, tmp_path)
    except Exception:
        # What the page showed and logged: the timeout alone does not say why.
        browser.save_screenshot(str(tmp_path / "failure.png"))
        logs = [f"{e['level']}: {e['message'][:300]}" for e in browser.get_log("browser")]
        text = browser.find_element(By.TAG_NAME, "body").text[-3000:]
        print(f"screenshot: {tmp_path / 'failure.png'}\nconsole:", *logs, "page:", text, sep="\n")
        raise


def _check_dashboard(lab: str, driver: Any, tmp_path: Path) -> None:
    driver.get(lab)
    until(
        driver,
        lambda d: d.execute_script(NOTEBOOK_READY),
        timeout=60,
        message="the notebook open with an idle kernel",
    )
    # The notebook as a user sees it on a laptop: 1400x1000, the file browser open beside it.
    assert driver.execute_script("return [window.innerWidth, window.innerHeight];") == list(WINDOW)
    driver.execute_script(OPEN_FILE_BROWSER)
    until(driver, lambda d: d.execute_script(FILE_BROWSER_SHOWN), timeout=10, message="files")
    first_unrun = driver.execute_script(RUN_TO_DASHBOARD)
    assert first_unrun > 5

    # The dashboard renders (no "Error displaying widget") and its chart takes points.
    until(
        driver,
        lambda d: int(chart_state(d).get("points", "0")) > 0,
        timeout=60,
        message="the live chart draws points",
    )
    page = driver.find_element(By.TAG_NAME, "body").text
    assert "Error displaying widget" not in page
    assert not driver.execute_script(ERROR_OUTPUTS)
    state = chart_state(driver)
    assert state["zoomed"] == "0"
    assert int(state["devices"]) == 5
    updates, points = int(state["updates"]), int(state["points"])
    state = until(
        driver,
        lambda d: (
            (s := chart_state(d))
            and int(s["updates"]) >= updates + 2
            and int(s["points"]) > points
            and s
        ),
        timeout=15,
        message="new points arrive",
    )
    # Following the data: the time axis moves on with each update.
    assert float(state["xMax"]) - float(state["xMin"]) == pytest.approx(61_200, rel=1e-6)

    # Zoom: a drag over the middle half of the plot.
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", over(driver))
    width = over(driver).size["width"]
    before = chart_state(driver)
    ActionChains(driver).move_to_element_with_offset(
        over(driver), -width // 4, 0
    ).click_and_hold().move_by_offset(width // 2, 0).release().perform()
    zoomed = until(
        driver,
        lambda d: (s := chart_state(d)).get("zoomed") == "1" and s,
        timeout=5,
        message="zoomed",
    )
    span = float(zoomed["xMax"]) - float(zoomed["xMin"])
    assert span < 0.6 * (float(before["xMax"]) - float(before["xMin"]))
    # ... and the zoomed view stays put while new points arrive.
    later = until(
        driver,
        lambda d: (s := chart_state(d)) and int(s["updates"]) >= int(zoomed["updates"]) + 2 and s,
        timeout=15,
        message="updates while zoomed",
    )
    assert (later["xMin"], later["xMax"], later["zoomed"]) == (
        zoomed["xMin"],
        zoomed["xMax"],
        "1",
    )

    # Shift+drag pans: the same span, earlier times, still zoomed.
    ActionChains(driver).move_to_element(over(driver)).key_down(
        Keys.SHIFT
    ).click_and_hold().move_by_offset(width // 4, 0).release().key_up(Keys.SHIFT).perform()
    panned = until(
        driver,
        lambda d: (s := chart_state(d)) and float(s["xMin"]) < float(zoomed["xMin"]) and s,
        timeout=5,
        message="panned",
    )
    assert panned["zoomed"] == "1"
    assert float(panned["xMax"]) - float(panned["xMin"]) == pytest.approx(span, rel=1e-6)

    # Double-click follows the data again.
    ActionChains(driver).double_click(over(driver)).perform()
    until(driver, lambda d: chart_state(d).get("zoomed") == "0", timeout=5, message="reset")

    # The health table lists the fleet's five devices.
    # (read in one script: the table is replaced at every refresh)
    listed = (
        "return Array.from(document.querySelectorAll('.tesaiot-health tr[data-device]'))"
        ".map((row) => row.dataset.device);"
    )
    health_rows: list[str] = until(
        driver,
        lambda d: len(rows := d.execute_script(listed)) >= 5 and rows,
        timeout=20,
        message="the health table lists the fleet",
    )
    assert len(health_rows) == 5
    devices = set(health_rows)
    assert all(len(device) > 8 for device in devices)  # the fleet's ids are long UUIDs

    # Hovering the newest point shows its exact UTC time, full device id and value.
    def hover(d: Any) -> str:
        probe = chart_state(d).get("probe", "")
        if not probe:
            return ""
        x, y = (float(v) for v in probe.split(","))
        area = over(d)
        size = area.size
        ActionChains(d).move_to_element_with_offset(
            area, int(x - size["width"] / 2), int(y - size["height"] / 2)
        ).perform()
        tip = d.find_element(By.CSS_SELECTOR, ".tesaiot-live-tip")
        return str(tip.text) if tip.is_displayed() else ""

    tip = until(driver, hover, timeout=10, message="a tooltip on hovering the newest point")
    lines = tip.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC", lines[0]), tip
    assert lines[1] in devices, tip
    assert re.fullmatch(r"temperature = -?[\d.e+-]+ celsius", lines[2]), tip

    # A fired alert appears: the notebook sets a rule the demo fleet's pressure crosses.
    until(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, ".tesaiot-alerts tr.firing"),
        timeout=30,
        message="a fired alert in the alerts table",
    )

    check_layout(driver, devices)
    check_metric_switch(driver)
    take_screenshot(driver, tmp_path, since_updates=int(later["updates"]))

    severe = _severe(driver)
    assert not severe, f"browser console errors: {severe}"

    # The rest of the notebook runs through (it stops the collector and the demo).
    driver.execute_script(RUN_THE_REST, first_unrun)
    until(driver, lambda d: d.execute_script(LAST_CELL_DONE), timeout=60, message="notebook done")
    assert not driver.execute_script(ERROR_OUTPUTS)
    try:
        severe = _severe(driver)
    except WebDriverException:  # pragma: no cover
        severe = []
    assert not severe, f"browser console errors: {severe}"
