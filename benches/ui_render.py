"""The UI's cost, seen from a browser and from the agent it talks to (benches/ui.sh).

usage: ui_render.py AGENT DCS RUNS SECONDS PID
  AGENT    host:port of the agent whose /ui/ is opened
  DCS      how many DCs the overview must show
  RUNS     page loads timed
  SECONDS  how long the agent's CPU is sampled with the UI closed, then open
  PID      the agent's process id

Prints, per load, the time from navigation start until every DC's card shows its service
count (polled every 10 ms in the page's own clock), then the agent's CPU (% of one core)
with no UI open and with the overview, then the services page, open.
"""

import os
import sys
import time

from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../tests/py"))
import chromium  # noqa: E402  (the UI test's browser setup)

AGENT, DCS, RUNS, SECONDS, PID = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
HZ = os.sysconf("SC_CLK_TCK")


def ticks():
    with open(f"/proc/{PID}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu(seconds):
    t0, c0 = time.monotonic(), ticks()
    time.sleep(seconds)
    return 100.0 * (ticks() - c0) / HZ / (time.monotonic() - t0)


driver = chromium.start()
READY = """
const cards = document.querySelectorAll('section.card dd .counts');
return cards.length >= arguments[0] ? performance.now() : null;
"""
try:
    times = []
    for run in range(RUNS):
        driver.get("about:blank")
        driver.get(f"http://{AGENT}/ui/#/dc1/overview")
        at = WebDriverWait(driver, 30, poll_frequency=0.01).until(
            lambda d: d.execute_script(READY, DCS))
        services = driver.execute_script(
            "return [...document.querySelectorAll('section.card')].map(c => c.innerText.split('Services')[1].trim().split(' ')[0])")
        times.append(at)
        print(f"overview load {run + 1}: every DC's card rendered {at:.0f} ms after navigation start (services per DC: {', '.join(services)})")
    times.sort()
    print(f"overview: median {times[len(times) // 2]:.0f} ms, worst {times[-1]:.0f} ms")
    driver.get("about:blank")
    idle = cpu(SECONDS)
    driver.get(f"http://{AGENT}/ui/#/dc1/overview")
    time.sleep(2)
    overview = cpu(SECONDS)
    driver.get(f"http://{AGENT}/ui/#/dc1/services")
    time.sleep(2)
    services = cpu(SECONDS)
    print(f"agent CPU over {SECONDS:.0f} s: no UI {idle:.2f}%, overview open {overview:.2f}% "
          f"(+{overview - idle:.2f}), services page open {services:.2f}% (+{services - idle:.2f})")
finally:
    driver.quit()
