"""The headless Chromium the browser tests share (selenium + the system chromedriver).

``browser``: one driver per test session, console messages recorded (``browser_errors``
reads the SEVERE ones and clears the log). Skipped when Chromium or chromedriver is not
installed (``make browser`` installs both).
"""

from __future__ import annotations

import shutil
import tempfile

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--enable-unsafe-swiftshader",  # WebGL (plotly scattergl) on the CPU, no GPU needed
                "--window-size=1400,1000")


def start_browser():
    """A headless Chromium driver and its temporary profile folder (the caller quits both)."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium/chromedriver not installed: make browser (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="armbench-chrome-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + (f"--user-data-dir={profile}",):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    return driver, profile


@pytest.fixture(scope="session")
def browser():
    driver, profile = start_browser()
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def browser_errors(driver) -> list[dict]:
    """SEVERE console entries since the last call (reading the log clears it)."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


@pytest.fixture
def console_errors():
    """``console_errors(driver)``: the SEVERE console entries since the last read."""
    return browser_errors
