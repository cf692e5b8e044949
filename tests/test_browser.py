"""The dashboard in a real JupyterLab, driven by headless Chromium through Selenium.

One module, one JupyterLab: notebook 01 (the demo broker, its fleet and a dashboard) runs in
it up to the dashboard; then the chart must draw, take new points, zoom and keep its zoom
while data arrive, the health table must list the fleet, and the browser console must stay
free of errors. The rest of the notebook runs last (it stops the demo).

Skipped where Chromium, chromedriver or selenium are missing. `TESAIOT_SCREENSHOT=1` saves
the dashboard as docs/dashboard.png (the README's picture).
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
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

try:
    from selenium import webdriver
    from selenium.common.exceptions import (
        JavascriptException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import WebDriverWait

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


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium, its console log kept."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1100",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _until(driver: Any, check: Any, *, timeout: float, message: str) -> Any:
    """Poll `check(driver)` until it is truthy (JavaScript errors count as not yet)."""
    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.25,
        ignored_exceptions=(JavascriptException, StaleElementReferenceException),
    ).until(check, message=message)


def _chart_state(driver: Any) -> dict[str, str]:
    state: dict[str, str] = driver.execute_script(
        "const el = document.querySelector('.tesaiot-live');"
        "return el ? Object.assign({}, el.dataset) : {};"
    )
    return state


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


def _over(driver: Any) -> WebElement:
    """The chart's plot area, found afresh (JupyterLab may render a cell's output anew)."""
    element: WebElement = driver.find_element(By.CSS_SELECTOR, ".tesaiot-live .u-over")
    return element


def _severe(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_dashboard_in_jupyterlab(lab: str, browser: Any, tmp_path: Path) -> None:
    try:
        _check_dashboard(lab, browser)
    except Exception:
        # What the page showed and logged: the timeout alone does not say why.
        browser.save_screenshot(str(tmp_path / "failure.png"))
        logs = [f"{e['level']}: {e['message'][:300]}" for e in browser.get_log("browser")]
        text = browser.find_element(By.TAG_NAME, "body").text[-3000:]
        print(f"screenshot: {tmp_path / 'failure.png'}\nconsole:", *logs, "page:", text, sep="\n")
        raise


def _check_dashboard(lab: str, driver: Any) -> None:
    driver.get(lab)
    _until(
        driver,
        lambda d: d.execute_script(NOTEBOOK_READY),
        timeout=60,
        message="the notebook open with an idle kernel",
    )
    first_unrun = driver.execute_script(RUN_TO_DASHBOARD)
    assert first_unrun > 5

    # The dashboard renders (no "Error displaying widget") and its chart takes points.
    _until(
        driver,
        lambda d: int(_chart_state(d).get("points", "0")) > 0,
        timeout=60,
        message="the live chart draws points",
    )
    page = driver.find_element(By.TAG_NAME, "body").text
    assert "Error displaying widget" not in page
    assert not driver.execute_script(ERROR_OUTPUTS)
    state = _chart_state(driver)
    assert state["zoomed"] == "0"
    assert int(state["devices"]) == 5
    updates, points = int(state["updates"]), int(state["points"])
    state = _until(
        driver,
        lambda d: (
            (s := _chart_state(d))
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
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", _over(driver))
    width = _over(driver).size["width"]
    before = _chart_state(driver)
    ActionChains(driver).move_to_element_with_offset(
        _over(driver), -width // 4, 0
    ).click_and_hold().move_by_offset(width // 2, 0).release().perform()
    zoomed = _until(
        driver,
        lambda d: (s := _chart_state(d)).get("zoomed") == "1" and s,
        timeout=5,
        message="zoomed",
    )
    span = float(zoomed["xMax"]) - float(zoomed["xMin"])
    assert span < 0.6 * (float(before["xMax"]) - float(before["xMin"]))
    # ... and the zoomed view stays put while new points arrive.
    later = _until(
        driver,
        lambda d: (s := _chart_state(d)) and int(s["updates"]) >= int(zoomed["updates"]) + 2 and s,
        timeout=15,
        message="updates while zoomed",
    )
    assert (later["xMin"], later["xMax"], later["zoomed"]) == (
        zoomed["xMin"],
        zoomed["xMax"],
        "1",
    )

    # Shift+drag pans: the same span, earlier times, still zoomed.
    ActionChains(driver).move_to_element(_over(driver)).key_down(
        Keys.SHIFT
    ).click_and_hold().move_by_offset(width // 4, 0).release().key_up(Keys.SHIFT).perform()
    panned = _until(
        driver,
        lambda d: (s := _chart_state(d)) and float(s["xMin"]) < float(zoomed["xMin"]) and s,
        timeout=5,
        message="panned",
    )
    assert panned["zoomed"] == "1"
    assert float(panned["xMax"]) - float(panned["xMin"]) == pytest.approx(span, rel=1e-6)

    # Double-click follows the data again.
    ActionChains(driver).double_click(_over(driver)).perform()
    _until(driver, lambda d: _chart_state(d).get("zoomed") == "0", timeout=5, message="reset")

    # The health table lists the fleet's five devices.
    # (read in one script: the table is replaced at every refresh)
    listed = (
        "return Array.from(document.querySelectorAll('.tesaiot-health tr[data-device]'))"
        ".map((row) => row.dataset.device);"
    )
    health_rows: list[str] = _until(
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
        probe = _chart_state(d).get("probe", "")
        if not probe:
            return ""
        x, y = (float(v) for v in probe.split(","))
        over = _over(d)
        size = over.size
        ActionChains(d).move_to_element_with_offset(
            over, int(x - size["width"] / 2), int(y - size["height"] / 2)
        ).perform()
        tip = d.find_element(By.CSS_SELECTOR, ".tesaiot-live-tip")
        return str(tip.text) if tip.is_displayed() else ""

    tip = _until(driver, hover, timeout=10, message="a tooltip on hovering the newest point")
    lines = tip.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC", lines[0]), tip
    assert lines[1] in devices, tip
    assert re.fullmatch(r"temperature = -?[\d.e+-]+ celsius", lines[2]), tip

    # A fired alert appears: the notebook sets a rule the demo fleet's pressure crosses.
    _until(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, ".tesaiot-alerts tr.firing"),
        timeout=30,
        message="a fired alert in the alerts table",
    )

    if os.environ.get("TESAIOT_SCREENSHOT"):
        # A tall window, the side bar closed: the whole dashboard in one picture.
        driver.execute_script("window.jupyterapp.shell.collapseLeft();")
        driver.set_window_size(1300, 2600)
        dashboard = driver.find_element(By.CSS_SELECTOR, ".widget-vbox:has(.tesaiot-live)")
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", dashboard)
        status = dashboard.find_element(By.CSS_SELECTOR, ".widget-label")
        ActionChains(driver).move_to_element(status).perform()  # no tooltip in the picture
        _until(
            driver,
            # some 20 s of data on the 1-minute axis
            lambda d: int(_chart_state(d)["updates"]) >= int(later["updates"]) + 20,
            timeout=40,
            message="more updates before the picture",
        )
        (ROOT / "docs").mkdir(exist_ok=True)
        dashboard.screenshot(str(ROOT / "docs" / "dashboard.png"))

    severe = _severe(driver)
    assert not severe, f"browser console errors: {severe}"

    # The rest of the notebook runs through (it stops the collector and the demo).
    driver.execute_script(RUN_THE_REST, first_unrun)
    _until(driver, lambda d: d.execute_script(LAST_CELL_DONE), timeout=60, message="notebook done")
    assert not driver.execute_script(ERROR_OUTPUTS)
    try:
        severe = _severe(driver)
    except WebDriverException:  # pragma: no cover
        severe = []
    assert not severe, f"browser console errors: {severe}"
