"""Debian's headless Chromium through its chromedriver, as the UI test and the UI bench
drive it (`CHROMIUM` and `CHROMEDRIVER` override where the binaries are)."""

import os

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def start():
    """A new headless browser with a 1280x900 window, no proxy, no sandbox (CI runs as
    root)."""
    opts = webdriver.ChromeOptions()
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-proxy-server"]:
        opts.add_argument(arg)
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    return webdriver.Chrome(
        service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=opts)
