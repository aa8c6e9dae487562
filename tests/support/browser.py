"""A real headless browser for the tests: Debian's chromium driven by its chromium-driver.

``.ci/run`` installs both. Selenium is pointed at ``/usr/bin/chromedriver`` so that its
selenium-manager never tries to download a browser. Where they are missing the browser tests
skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def headless_chromium(profile: Path, *, offline: bool = False, width: int = 1400,
                      height: int = 1000):
    """A selenium ``webdriver.Chrome`` on headless chromium with a fresh profile.

    Args:
        profile: an empty folder for the browser's user data.
        offline: resolve no host name, so any request to the network fails.
    """
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        reason = f"no headless browser: {', '.join(missing)} missing (apt-get install " \
                 "chromium chromium-driver; pip install selenium)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--no-first-run",
                "--disable-component-update", "--disable-sync",
                f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    if offline:
        # Every host name fails to resolve: a page that needs a CDN cannot get it.
        options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
