"""Drives the web UI in headless Chromium (Debian's chromium and chromedriver, through
Selenium) against a running federation, and checks what a user sees.

usage: ui_browser.py federation DC1_AGENT DC2_CLIENT ARTIFACTS
         DC1_AGENT   host:port of a dc1 agent whose UI is opened
         DC2_CLIENT  host:port of the dc2 client agent where `web` (check service:web-dc2) runs
       ui_browser.py acl AGENT TOKEN ARTIFACTS
         AGENT       host:port of an agent with ACLs on (default deny)
         TOKEN       a token that may read everything (the management token)
       ARTIFACTS     folder for the screenshots

Every wait has a deadline; a failed check raises (exit status 1) with what was seen.
"""

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

import chromium

MODE = sys.argv[1]
if MODE == "federation":
    DC1, DC2_CLIENT, ARTIFACTS = sys.argv[2], sys.argv[3], sys.argv[4]
else:
    DC1, TOKEN, ARTIFACTS = sys.argv[2], sys.argv[3], sys.argv[4]
os.makedirs(ARTIFACTS, exist_ok=True)


def call(method, addr, path, body=None):
    req = urllib.request.Request(f"http://{addr}/v1/{path}", method=method, data=body)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def kv_value(key):
    status, body = call("GET", DC1, f"kv/{key}")
    if status == 404:
        return None
    return base64.b64decode(body[0]["Value"] or "").decode()


driver = chromium.start()
wait = WebDriverWait(driver, 20)


def shot(name):
    driver.save_screenshot(os.path.join(ARTIFACTS, f"{name}.png"))


def go(hash_):
    driver.get(f"http://{DC1}/ui/#{hash_}")


def text_of(css):
    """The text of the first element matching `css` now ("" if none): asked in one script
    call, so a live re-render between finding and reading cannot fail it."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", css)


def status_of(css):
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.dataset.status : null", css)


def federation():
    # The overview: both DCs, each reachable with a leader.
    t0 = time.monotonic()
    driver.get(f"http://{DC1}/ui/")
    for dc in ["dc1", "dc2"]:
        wait.until(lambda d, dc=dc: text_of(f'section.card[data-dc="{dc}"] dd.leader'))
        leader = text_of(f'section.card[data-dc="{dc}"] dd.leader')
        assert leader and leader != "none", f"{dc} shows a leader: {leader!r}"
    print(f"overview: both DCs with leaders after {time.monotonic() - t0:.2f} s")
    assert "/ui/#/dc1/overview" in driver.current_url, driver.current_url
    shot("overview")

    # Phone width: the page fits the screen.
    driver.set_window_size(390, 844)
    time.sleep(0.3)  # layout after a resize; no data is awaited here
    over = driver.execute_script(
        "return document.documentElement.scrollWidth - window.innerWidth")
    shot("overview-phone")
    assert over <= 1, f"the overview overflows a phone-width screen by {over}px"
    driver.set_window_size(1280, 900)

    # A dc2 service from a dc1 agent: its instance and check, then live to critical.
    go("/dc2/services/web")
    row = 'section[data-dc="dc2"] tr[data-instance="web-dc2"]'
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, row)))
    wait.until(lambda d: status_of(row) == "passing")
    shot("service")
    driver.execute_script("window.__notReloaded = true")
    code, body = call("PUT", DC2_CLIENT, "agent/check/fail/service:web-dc2?note=down%20for%20the%20test")
    assert code == 200, (code, body)
    wait.until(lambda d: status_of(row) == "critical")
    assert driver.execute_script("return window.__notReloaded === true"), "the page reloaded"
    assert "down for the test" in text_of(row), text_of(row)
    print("service: dc2 instance turned critical on the page without a reload")
    shot("service-critical")

    # Services list with a filter, nodes, sessions, members.
    go("/dc1/services")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-service="web"]')))
    shot("services")
    go("/dc1/nodes")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "tr[data-node]")))
    shot("nodes")
    go("/dc1/members")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "tr[data-member]")))
    shot("members")
    go("/dc1/sessions")
    wait.until(lambda d: "No sessions" in d.page_source or d.find_elements(By.CSS_SELECTOR, "tr[data-session]"))
    shot("sessions")

    # KV: create through the page, seen by the API.
    go("/dc1/kv/ui-test/")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, 'form.create input[name="key"]')))
    driver.find_element(By.CSS_SELECTOR, 'form.create input[name="key"]').send_keys("greeting")
    driver.find_element(By.CSS_SELECTOR, 'form.create textarea[name="value"]').send_keys("hello v1")
    driver.find_element(By.CSS_SELECTOR, 'form.create button[type="submit"]').click()
    wait.until(lambda d: "/kv-edit/ui-test/greeting" in d.current_url)
    assert kv_value("ui-test/greeting") == "hello v1", kv_value("ui-test/greeting")
    print("kv: created through the page")

    # Edit with CAS.
    area = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, 'form.edit textarea')))

    def save(text):
        area.clear()
        area.send_keys(text)
        driver.find_element(By.CSS_SELECTOR, 'form.edit button[type="submit"]').click()

    save("hello v2")
    wait.until(lambda d: "Saved." in text_of("p.status"))
    assert kv_value("ui-test/greeting") == "hello v2", kv_value("ui-test/greeting")
    shot("kv-edit")
    # Someone else writes behind the page's back: the page's save is refused, not lost.
    call("PUT", DC1, "kv/ui-test/greeting", b"changed elsewhere")
    save("hello v3")
    wait.until(lambda d: "Not saved" in text_of("p.status"))
    assert kv_value("ui-test/greeting") == "changed elsewhere", kv_value("ui-test/greeting")
    print("kv: a concurrent change is not overwritten silently")

    # Delete (after a reload, so the page holds the current index).
    driver.refresh()
    wait.until(lambda d: "changed elsewhere" in text_of("pre.value"))
    driver.find_element(By.CSS_SELECTOR, "button.danger").click()
    WebDriverWait(driver, 10).until(EC.alert_is_present()).accept()
    wait.until(lambda d: "/kv/ui-test" in d.current_url and "kv-edit" not in d.current_url)
    assert kv_value("ui-test/greeting") is None, "deleted"
    print("kv: deleted through the page")

    # A value with HTML in it is shown as text, never run.
    go("/dc1/kv-edit/app/html")
    wait.until(lambda d: "<script>" in text_of("pre.value"))
    assert text_of("pre.value") == "<script>window.__pwned = 1</script><b>bold?</b>", text_of("pre.value")
    assert driver.execute_script("return window.__pwned === undefined"), "the value's script ran"
    assert not driver.find_elements(By.CSS_SELECTOR, "pre.value b, pre.value script"), "the value became markup"
    print("kv: an HTML value is shown literally")
    shot("kv-html")


def acl():
    # With no token, the page asks for one (the agent's own endpoint answered 403).
    driver.get(f"http://{DC1}/ui/")
    wait.until(lambda d: d.execute_script("return !document.getElementById('banner').hidden"))
    assert "ACL not found" in text_of("#banner") or "Permission denied" in text_of("#banner"), text_of("#banner")
    shot("acl-token-asked")
    driver.find_element(By.CSS_SELECTOR, '#banner input[type="password"]').send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, '#banner button[type="submit"]').click()
    wait.until(lambda d: d.execute_script("return document.getElementById('banner').hidden"))
    # With it, the DC's services (hidden from the anonymous token) are listed.
    go("/dc1/services")
    WebDriverWait(driver, 60).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-service="consul"]')))
    stored = driver.execute_script(
        "return [sessionStorage.getItem('consulate.token'), JSON.stringify(localStorage), document.cookie]")
    assert stored[0] == TOKEN, "the token is in the tab's session storage"
    assert TOKEN not in stored[1] and TOKEN not in stored[2], f"the token is nowhere else: {stored[1:]}"
    assert TOKEN not in driver.current_url, "the token is not in the URL"
    print("acl: asked for a token, kept it in session storage only, listed with it")


try:
    try:
        federation() if MODE == "federation" else acl()
    except Exception:
        # What the page showed when a check failed.
        shot(f"failed-{MODE}")
        print("page at failure:", driver.current_url)
        print(driver.execute_script("return document.body.innerText"))
        print("browser log:", driver.get_log("browser"))
        raise
    # Script errors only: answers such as the 404 of an empty KV folder are the API's.
    logs = [e for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and e.get("source") != "network"]
    assert not logs, f"script errors: {logs}"
    print("ok")
finally:
    driver.quit()
