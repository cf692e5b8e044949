"""What the browser test looks at in the dashboard, and how: page scripts and checks.

The dashboard's layout as a user sees it in JupyterLab (controls above the chart, a device x
metric grid short enough that health and alerts show in the first 1,000 pixels, short device
ids), a text metric's states in place of the chart, and the window's screenshot. Each check
reads the page in one script: the widgets replace their HTML at every refresh.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from selenium.common.exceptions import JavascriptException, StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser_driver import WINDOW

ROOT = Path(__file__).resolve().parent.parent


def until(driver: Any, check: Any, *, timeout: float, message: str) -> Any:
    """Poll `check(driver)` until it is truthy (JavaScript errors count as not yet)."""
    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.25,
        ignored_exceptions=(JavascriptException, StaleElementReferenceException),
    ).until(check, message=message)


def chart_state(driver: Any) -> dict[str, str]:
    """The live chart's state (its root element's data attributes); {} before it draws."""
    state: dict[str, str] = driver.execute_script(
        "const el = document.querySelector('.tesaiot-live');"
        "return el ? Object.assign({}, el.dataset) : {};"
    )
    return state


def over(driver: Any) -> WebElement:
    """The chart's plot area, found afresh (JupyterLab may render a cell's output anew)."""
    element: WebElement = driver.find_element(By.CSS_SELECTOR, ".tesaiot-live .u-over")
    return element


OPEN_FILE_BROWSER = "window.jupyterapp.shell.activateById('filebrowser');"

FILE_BROWSER_SHOWN = """
const files = document.getElementById('filebrowser');
return Boolean(
  files && files.offsetWidth > 150 && !window.jupyterapp.shell.leftCollapsed
  && files.textContent.includes('01_live_quickstart'),
);
"""

# Positions are in pixels from the dashboard's top (the same whatever the page's scroll).
DASHBOARD = "const dash = document.querySelector('.widget-vbox:has(.tesaiot-live)');"
LAYOUT = (
    DASHBOARD
    + """
const origin = dash.getBoundingClientRect().top;
const top = (el) => el.getBoundingClientRect().top - origin;
const bottom = (el) => el.getBoundingClientRect().bottom - origin;
const button = (text) => Array.from(dash.querySelectorAll('button')).find(
  (b) => b.textContent.trim() === text,
);
const grid = Array.from(dash.querySelectorAll('table.tesaiot-grid')).find(
  (t) => t.querySelector('th').textContent === 'device',
);
const devices = dash.querySelector('.widget-select-multiple');
const list = devices.querySelector('select');
return {
  record: bottom(button('Record')),
  snapshot: bottom(button('Snapshot now')),
  chart: top(dash.querySelector('.tesaiot-live')),
  metrics: Array.from(dash.querySelector('.widget-dropdown select').options).map(
    (o) => o.textContent,
  ),
  head: Array.from(grid.querySelectorAll('thead th')).map((th) => th.childNodes[0].textContent),
  rows: Array.from(grid.querySelectorAll('tbody tr')).map(
    (tr) => Array.from(tr.cells).map((td) => [td.textContent, td.title]),
  ),
  gridHeight: grid.getBoundingClientRect().height,
  health: bottom(dash.querySelector('.tesaiot-health')),
  alerts: top(dash.querySelector('.tesaiot-alerts')),
  deviceLabels: Array.from(list.options).map((o) => o.textContent),
  deviceTips: [devices, ...devices.querySelectorAll('[title]')].map((el) => el.title).join(' '),
  deviceList: [list.scrollWidth, list.clientWidth],
  dashboard: [dash.scrollWidth, dash.clientWidth],
  text: document.body.innerText,
};
"""
)

TEXT_VIEW = (
    DASHBOARD
    + """
const states = Array.from(dash.querySelectorAll('table.tesaiot-grid')).find(
  (t) => t.querySelector('th').textContent.startsWith('since'),
);
const live = dash.querySelector('.tesaiot-live');
return {
  shown: Boolean(states && states.offsetParent !== null),
  chart: live.offsetParent !== null,
  rows: states ? Array.from(states.querySelectorAll('tbody tr')).map(
    (tr) => Array.from(tr.cells).map((td) => [td.textContent, td.title]),
  ) : [],
  text: dash.innerText,
};
"""
)

CHART_TITLE = (
    DASHBOARD
    + "const t = dash.querySelector('.tesaiot-live-title');"
    + "return t && t.offsetParent !== null ? t.textContent : '';"
)

NEGATIVE_ZERO = "-0.0 s"  # an age or a lag rounded to zero shows as "0.0 s"


def check_layout(driver: Any, devices: set[str]) -> None:
    """Controls above the chart; a device x metric grid that leaves room for the monitors."""
    layout: dict[str, Any] = until(
        driver,
        lambda d: (
            (got := d.execute_script(LAYOUT))
            and len(got["rows"]) == len(devices)
            and "ai_prediction" in got["metrics"]
            and got
        ),
        timeout=30,
        message="the latest-values grid lists the fleet and its text metric",
    )
    assert layout["record"] < layout["chart"], layout
    assert layout["snapshot"] < layout["chart"], layout
    # One column per metric seen (as the metric selector offers them), one row per device.
    metrics = layout["metrics"]
    assert layout["head"] == ["device", *sorted(metrics), "age"], layout["head"]
    rows = layout["rows"]
    assert {row[0][1] for row in rows} == devices
    for row in rows:
        (label, full), *cells, (age, _) = row
        assert len(cells) == len(metrics), row
        assert full.startswith(label), row  # a short id, the full one on hover
        assert len(label) < len(full), row
        assert re.fullmatch(r"\d+(\.\d+)? (ms|s|min|h)", age), row
    column = {metric: [row[1 + i][0] for row in rows] for i, metric in enumerate(metrics)}
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", value) for value in column["temperature"]), column
    labels = [value for value in column["ai_prediction"] if value]
    assert labels, column
    assert not any(re.fullmatch(r"[-\d.e+]+", value) for value in labels), column
    # Five rows, not thirty: health and alerts within the first 1,000 px of the dashboard.
    assert layout["gridHeight"] < 40 * (len(devices) + 2), layout["gridHeight"]
    assert layout["health"] < 1000, layout
    assert layout["alerts"] < 1000, layout
    # The device list: short ids without a horizontal scroll bar, the full ids on hover.
    assert len(layout["deviceLabels"]) == len(devices)
    for label in layout["deviceLabels"]:
        assert sum(device.startswith(label) for device in devices) == 1, label
        assert len(label) < min(len(device) for device in devices), label
    assert all(device in layout["deviceTips"] for device in devices), layout["deviceTips"]
    assert layout["deviceList"][0] <= layout["deviceList"][1], layout["deviceList"]
    assert layout["dashboard"][0] <= layout["dashboard"][1] + 1, layout["dashboard"]
    assert NEGATIVE_ZERO not in layout["text"]


def _choose_metric(driver: Any, metric: str) -> None:
    selector = driver.find_element(
        By.CSS_SELECTOR, ".widget-vbox:has(.tesaiot-live) .widget-dropdown select"
    )
    Select(selector).select_by_visible_text(metric)


def check_metric_switch(driver: Any) -> None:
    """Another metric resets the zoom and its unit; a text metric shows its states."""
    width = over(driver).size["width"]
    ActionChains(driver).move_to_element_with_offset(
        over(driver), -width // 4, 0
    ).click_and_hold().move_by_offset(width // 2, 0).release().perform()
    until(driver, lambda d: chart_state(d).get("zoomed") == "1", timeout=5, message="zoomed")

    _choose_metric(driver, "humidity")
    title = until(
        driver,
        lambda d: (t := d.execute_script(CHART_TITLE)).startswith("humidity") and t,
        timeout=15,
        message="the chart shows humidity",
    )
    assert title == "humidity [percent]"  # the unit follows the data
    until(driver, lambda d: chart_state(d).get("zoomed") == "0", timeout=5, message="unzoomed")

    _choose_metric(driver, "ai_prediction")
    view = until(
        driver,
        lambda d: (v := d.execute_script(TEXT_VIEW))["shown"] and v["rows"] and v,
        timeout=15,
        message="the text metric's states in place of the chart",
    )
    assert not view["chart"]
    assert "no text values" not in view["text"]
    for (since, _), (label, full), (value, _), (count, _) in view["rows"]:
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", since), view["rows"]
        assert full.startswith(label), view["rows"]
        assert len(label) < len(full), view["rows"]
        assert value, view["rows"]
        assert not re.fullmatch(r"[-\d.e+]+", value), view["rows"]
        assert int(count.replace(",", "")) >= 1
    assert NEGATIVE_ZERO not in view["text"]

    _choose_metric(driver, "temperature")
    until(
        driver,
        lambda d: (
            d.execute_script(CHART_TITLE) == "temperature [celsius]"
            and not d.execute_script(TEXT_VIEW)["shown"]
            and int(chart_state(d).get("points", "0")) > 0
        ),
        timeout=15,
        message="the chart back on temperature",
    )


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def take_screenshot(driver: Any, tmp_path: Path, *, since_updates: int) -> None:
    """The window as a user sees it (1400x1000, files open): docs/dashboard.png's source."""
    dashboard = driver.find_element(By.CSS_SELECTOR, ".widget-vbox:has(.tesaiot-live)")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", dashboard)
    status = dashboard.find_element(By.CSS_SELECTOR, ".widget-label")
    ActionChains(driver).move_to_element(status).perform()  # no tooltip in the picture
    until(
        driver,
        # some 20 s of data on the 1-minute axis
        lambda d: int(chart_state(d)["updates"]) >= since_updates + 20,
        timeout=40,
        message="more updates before the picture",
    )
    assert driver.execute_script(FILE_BROWSER_SHOWN)
    assert NEGATIVE_ZERO not in driver.find_element(By.TAG_NAME, "body").text
    picture = tmp_path / "jupyterlab.png"
    assert driver.save_screenshot(str(picture))
    assert _png_size(picture) == WINDOW
    if os.environ.get("TESAIOT_SCREENSHOT"):
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(picture, ROOT / "docs" / "dashboard.png")
