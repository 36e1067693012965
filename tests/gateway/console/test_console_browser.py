"""The console in a real browser: headless Chromium against a live gateway process whose
devices are MQTT clients on a real mosquitto. Each test leaves a screenshot in its tmp dir."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.gateway.rollouts.rollout_support import cli, cli_json


def sign_in(browser, site, token: str) -> None:
    browser.get(site.url)
    assert browser.current_url.endswith("/ui/login"), browser.current_url
    field = browser.find_element(By.ID, "token")
    assert browser.find_element(By.CSS_SELECTOR, "label[for=token]").text
    field.send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()


def wait(browser, condition, timeout: float = 15):
    return WebDriverWait(browser, timeout).until(condition)


def post_from_page(browser, path: str, fields: dict) -> int:
    """A POST the page's own script could make (same origin, the session cookie): its status."""
    return browser.execute_async_script(
        """
        const [path, fields, done] = arguments;
        fetch(path, {method: "POST", credentials: "same-origin",
                     body: new URLSearchParams(fields), redirect: "manual"})
          .then(r => done(r.status)).catch(e => done(String(e)));
        """,
        path,
        fields,
    )


def test_operator_sees_the_fleet_opens_a_device_and_pauses_a_rollout(site, browser, tmp_path):
    sign_in(browser, site, site.admin_token)
    wait(browser, ec.title_contains("Fleet"))
    cards = browser.find_element(By.CSS_SELECTOR, "dl.cards").text
    assert "Devices\n3" in cards and "Online\n3" in cards, cards
    version_mix = browser.find_element(By.CSS_SELECTOR, "svg[aria-label^='Devices by model']")
    assert "kws v1: 3" in version_mix.get_attribute("aria-label")
    browser.save_screenshot(str(tmp_path / "fleet.png"))

    browser.find_element(By.LINK_TEXT, "Devices").click()
    wait(browser, ec.title_contains("Devices"))
    rows = browser.find_elements(By.CSS_SELECTOR, "table.devices tbody tr")
    assert [r.find_element(By.TAG_NAME, "a").text for r in rows] == ["sim00", "sim01", "sim02"]
    browser.find_element(By.LINK_TEXT, "sim01").click()
    wait(browser, ec.title_contains("Device sim01"))
    fields = browser.find_element(By.CSS_SELECTOR, "dl.fields").text
    assert "kws v1" in fields and "online" in fields, fields

    browser.find_element(By.LINK_TEXT, "Rollouts").click()
    wait(browser, ec.title_contains("Rollouts"))
    for field_id, value in (("r-model", "kws"), ("r-version", "2"), ("r-stages", "50,100")):
        element = browser.find_element(By.ID, field_id)
        element.clear()
        element.send_keys(value)
    soak = browser.find_element(By.ID, "r-soak")
    soak.clear()
    soak.send_keys("3600")
    browser.find_element(By.CSS_SELECTOR, "form.start button[type=submit]").click()
    wait(browser, ec.title_contains("Rollout kws-v2-"))
    rollout_id = browser.title.split(" ·")[0].removeprefix("Rollout ")
    assert browser.find_element(By.ID, "rollout-state").text == "running"
    bars = browser.find_elements(By.CSS_SELECTOR, "ol.stages svg[role=img]")
    assert len(bars) == 2 and "Stage 0" in bars[0].get_attribute("aria-label")

    browser.find_element(By.CSS_SELECTOR, "button[value=pause]").click()
    wait(browser, ec.text_to_be_present_in_element((By.ID, "rollout-state"), "paused"))
    browser.save_screenshot(str(tmp_path / "rollout-paused.png"))
    status = cli_json(site.gateway.config_path, "rollout", "status", rollout_id)
    assert status["state"] == "paused"

    # the live part follows the gateway without a reload: resumed from the CLI, shown running
    done = cli(site.gateway.config_path, "rollout", "resume", rollout_id)
    assert done.returncode == 0, done.stderr
    wait(browser, ec.text_to_be_present_in_element((By.ID, "rollout-state"), "running"), 20)
    assert (tmp_path / "fleet.png").stat().st_size > 1000


def test_a_wrong_token_is_refused(site, browser, tmp_path):
    sign_in(browser, site, site.admin_token[:-1] + ("A" if site.admin_token[-1] != "A" else "B"))
    wait(browser, ec.title_contains("Sign in"))
    assert "not accepted" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
    browser.save_screenshot(str(tmp_path / "refused.png"))
    browser.get(site.url + "devices")
    assert browser.current_url.endswith("/ui/login")
    assert browser.get_cookies() == []


def test_a_viewer_reads_but_cannot_act_and_forged_posts_are_refused(site, browser, tmp_path):
    started = cli_json(
        site.gateway.config_path, "rollout", "start", "--model", "kws", "--version", "2",
        "--stages", "50,100", "--soak", "1h",
    )  # fmt: skip
    rollout_id = started["id"]
    sign_in(browser, site, site.viewer_token)
    wait(browser, ec.title_contains("Fleet"))
    assert "viewer" in browser.find_element(By.CSS_SELECTOR, ".role").text
    browser.get(site.url + "rollouts/" + rollout_id)
    wait(browser, ec.title_contains("Rollout"))
    assert browser.find_elements(By.CSS_SELECTOR, ".actions button") == []
    browser.get(site.url + "rollouts")
    assert browser.find_elements(By.CSS_SELECTOR, "form.start") == []
    browser.save_screenshot(str(tmp_path / "viewer.png"))

    # a phone: every page fits 390 px across (wide tables scroll inside their own box)
    browser.set_window_size(390, 844)
    for page in ("", "devices", "devices/sim00", "rollouts", "rollouts/" + rollout_id, "data"):
        browser.get(site.url + page)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        viewport = browser.execute_script("return window.innerWidth")
        assert width <= viewport, (page, width, viewport)
    browser.save_screenshot(str(tmp_path / "phone.png"))
    browser.set_window_size(1280, 800)

    csrf = browser.find_element(By.CSS_SELECTOR, "form.account input[name=csrf]")
    token = csrf.get_attribute("value")
    pause = f"/ui/rollouts/{rollout_id}/pause"
    assert post_from_page(browser, pause, {"csrf": token}) == 403  # the viewer's own token
    assert post_from_page(browser, pause, {}) == 403
    assert cli_json(site.gateway.config_path, "rollout", "status", rollout_id)["state"] == "running"

    # an operator without the CSRF token (a forged form from elsewhere) is refused too
    browser.delete_all_cookies()
    sign_in(browser, site, site.admin_token)
    wait(browser, ec.title_contains("Fleet"))
    assert post_from_page(browser, pause, {"csrf": "x" * 43}) == 403
    assert post_from_page(browser, pause, {}) == 403
    assert cli_json(site.gateway.config_path, "rollout", "status", rollout_id)["state"] == "running"


def test_the_cookie_is_httponly_strict_and_the_bearer_api_is_unchanged(site, browser, tmp_path):
    sign_in(browser, site, site.admin_token)
    wait(browser, ec.title_contains("Fleet"))
    browser.get(site.url + "releases")
    assert "kws" in browser.find_element(By.TAG_NAME, "table").text
    browser.save_screenshot(str(tmp_path / "releases.png"))
    (cookie,) = browser.get_cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui/"
    assert site.admin_token not in json.dumps(cookie)
    assert browser.execute_script("return document.cookie") == ""

    # the console's port serves /ui/ only: no admin API there, with or without a cookie
    base = site.url.removesuffix("/ui/")
    for path in ("/v1/status", "/ui/../v1/status", "/ui/%2e%2e/v1/status"):
        request = urllib.request.Request(
            base + path, headers={"Authorization": f"Bearer {site.admin_token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                assert "version" not in answer.read().decode(), path
        except urllib.error.HTTPError as exc:
            assert exc.code in (303, 401, 404), (path, exc.code)
    # the CLI (bearer token on the unix socket) still works
    status = site.gateway.cli("status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["devices"] == 3
