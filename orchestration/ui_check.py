"""A real-browser check of the UI: the hit explanation's picture is rendered in the Dagster UI.

Starts ``cellrep ui`` on 127.0.0.1 for the current storage root, opens the ``hit_explanations`` asset page in
headless Chromium (Debian's ``chromium`` and ``chromium-driver`` packages, driven by Selenium), opens the first
walk strip of the asset's metadata and checks that the browser decoded the image (its natural width is that of
the PNG), then saves a screenshot. ``cellrep ui-check`` runs it; ``tests/test_pipeline.py`` runs it on the
tiny end-to-end home.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSET = "hit_explanations"


class UICheckError(RuntimeError):
    """The UI did not show what it should (the message says what was missing)."""


def browser_paths() -> tuple[str, str]:
    """Chromium and chromedriver from the system (Debian packages), or a clear error."""
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        raise UICheckError("the UI check needs Chromium and its driver: apt-get install chromium chromium-driver "
                           "(make install does it)")
    return chrome, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5).read()
            return
        except OSError:
            if proc.poll() is not None:
                raise UICheckError(f"cellrep ui exited with {proc.returncode} before serving") from None
            time.sleep(2)
    raise UICheckError(f"the Dagster UI did not answer on 127.0.0.1:{port} within {timeout_s:.0f} s")


def check_hit_explanation(screenshot: Path, timeout_s: float = 180.0) -> dict:
    """Serve the UI, open the hit explanation's page, render its first walk strip, screenshot it.

    Returns what was seen (the metadata key, the image's size in the browser); raises ``UICheckError`` when
    the page, the metadata entry or the rendered picture is missing."""
    chrome, driver_path = browser_paths()
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    cli = str(Path(sys.executable).with_name("cellrep"))
    from cellrep_core import paths

    log = paths.cellrep_home() / "reports" / "ui_check_server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen([cli, "ui", "--port", str(port)], cwd=ROOT, env=dict(os.environ),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    driver = None
    try:
        _wait_for_server(port, proc, timeout_s)
        opts = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1600,1000"):
            opts.add_argument(arg)
        opts.binary_location = chrome
        driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path))
        driver.get(f"http://127.0.0.1:{port}/assets/{ASSET}")
        wait = WebDriverWait(driver, timeout_s)
        try:
            row = wait.until(ec.presence_of_element_located(
                (By.XPATH, "//tr[.//*[contains(text(), '_walk')]][.//*[contains(text(), 'Show Markdown')]]")))
        except TimeoutException:
            driver.save_screenshot(str(screenshot))
            raise UICheckError(f"no walk strip in the metadata of {ASSET}: materialize it on a screen with a hit "
                               f"(page saved as {screenshot})") from None
        key = row.find_element(By.XPATH, ".//td[1]").text.strip()
        row.find_element(By.XPATH, ".//*[contains(text(), 'Show Markdown')]").click()
        try:
            img = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "img[src^='data:image/png']")))
            wait.until(lambda d: int(img.get_attribute("naturalWidth") or 0) > 0)
        except TimeoutException:
            driver.save_screenshot(str(screenshot))
            raise UICheckError(f"the walk strip {key} did not render as a picture "
                               f"(page saved as {screenshot})") from None
        time.sleep(1)
        driver.save_screenshot(str(screenshot))
        return {"metadata_key": key, "alt": img.get_attribute("alt"),
                "natural_width": int(img.get_attribute("naturalWidth")),
                "natural_height": int(img.get_attribute("naturalHeight")), "screenshot": str(screenshot)}
    finally:
        if driver is not None:
            driver.quit()
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
