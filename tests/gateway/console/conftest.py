"""Fixtures for the console's tests: a real gateway process with a served repository and the
console on a loopback port, simulated devices on a real mosquitto, and headless Chromium
driven by Selenium (Debian's chromium and chromedriver; never downloaded at run time)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_sim.broker import free_port
from tests.gateway.rollouts.rollout_support import (
    Fleet,
    import_release,
    operator_repository,
    wait_inventory,
)
from tests.gateway.support import Gateway

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@dataclass
class Site:
    gateway: Gateway
    url: str  # http://127.0.0.1:<port>/ui/
    admin_token: str
    viewer_token: str
    fleet: Fleet


@pytest.fixture
def site(broker, make_gateway, tmp_path: Path) -> Iterator[Site]:
    """A gateway serving kws v1 and v2 to three devices that run v1, console on loopback."""
    operator = operator_repository(tmp_path / "operator", versions=(1, 2))
    port = free_port()
    gateway = make_gateway(
        broker,
        None,
        repository={
            "dir": tmp_path / "gw" / "served",
            "keys": operator.keys.online,
            "listen": f"127.0.0.1:{free_port()}",
        },
        rollouts={"tick_s": 0.2, "reoffer_s": 30},
        admin={"console_listen": f"127.0.0.1:{port}"},
    )
    import_release(gateway, operator)
    fleet = Fleet(broker, 3)
    wait_inventory(gateway.config_path, 3)
    data = gateway.workdir / "data"
    yield Site(
        gateway,
        f"http://127.0.0.1:{port}/ui/",
        (data / "admin.token").read_text().strip(),
        (data / "viewer.token").read_text().strip(),
        fleet,
    )
    fleet.close()


@pytest.fixture
def browser(tmp_path: Path):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("no chromium or chromedriver: run scripts/install-system-deps.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()
