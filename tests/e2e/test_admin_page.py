# End to end: the admin page at `/` in headless Chromium, against the real `edge run` under traffic. Chromium
# runs the page's JavaScript (it polls /live and draws SVG charts and tables) with a virtual-time budget and
# dumps the resulting DOM, which is checked for the routes and clusters that carried traffic, their error
# rates, and the drawn series. A screenshot is kept in the test's tmp dir for people to look at.
#
# Needs /usr/bin/chromium (Debian's package; .ci/run installs it). Skipped, saying so, when it is missing.
from __future__ import annotations

import html
import http.client
import re
import shutil
import subprocess
import threading
import time
from collections import Counter

import pytest

from tests.e2e.harness import http_get
from tests.e2e.test_operations import TCP_PORT, backends, start  # noqa: F401 - `backends` is a fixture

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_TIMEOUT_S = 90
LOAD_MAX_S = 2 * CHROMIUM_TIMEOUT_S + 10  # the load stops when Chromium is done; this only bounds it
# Flags that work on a machine without network or display (see the machine notes): no background networking,
# no GPU, no sandbox (we run as root in CI), a fresh profile every time.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
)  # fmt: skip


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does it)")
def test_admin_page_shows_live_rates_errors_and_latency_per_route_and_cluster(tmp_path, backends):  # noqa: F811
    with start(tmp_path, backends) as edge:
        # The load runs until both Chromium runs are done (bounded by LOAD_MAX_S): a slow Chromium start on a busy
        # machine must still find traffic in the latest one-second sample.
        stop = threading.Event()
        stop_at = time.monotonic() + LOAD_MAX_S
        counts = {"ok": 0, "dead": 0}
        answers = {"ok": Counter(), "dead": Counter()}  # every status or error, for the assertion's message

        def load(host: str, kind: str) -> None:
            while not stop.is_set() and time.monotonic() < stop_at:
                try:
                    status = http_get(edge.port(80), "/", host=host)[0]
                except (OSError, http.client.HTTPException) as exc:
                    answers[kind][type(exc).__name__] += 1
                    continue
                answers[kind][status] += 1
                counts[kind] += status in (200, 503)

        threads = [threading.Thread(target=load, args=("app.example.com", "ok")), threading.Thread(target=load, args=("dead.example.com", "dead"))]
        for t in threads:
            t.start()
        try:
            time.sleep(2.5)  # a few one-second samples with traffic in them
            url = f"http://127.0.0.1:{edge.admin_port}/"
            dump = chromium(tmp_path, "--virtual-time-budget=4000", "--dump-dom", url)
            shot = chromium(tmp_path, "--virtual-time-budget=4000", "--window-size=1300,1100", f"--screenshot={tmp_path / 'admin.png'}", url)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
    assert dump.returncode == 0, dump.stderr[-2000:]
    dom = dump.stdout
    updates = re.search(r'<body data-updates="(\d+)"', dom)
    assert updates and int(updates.group(1)) >= 1, dom[:2000]  # the script ran and rendered
    assert counts["ok"] > 10 and counts["dead"] > 10, answers

    assert re.search(r'<b id="state" class="state-LIVE">LIVE</b>', dom)
    assert re.search(r'<b id="generation">1</b>', dom)
    assert re.search(r'<b id="workers">2/2</b>', dom)

    rows = dict(re.findall(r'<tr data-name="([^"]+)">(.*?)</tr>', dom, re.DOTALL))
    rows = {html.unescape(k): v for k, v in rows.items()}
    for name in ("0.0.0.0:80 app-route", "0.0.0.0:80 dead-route", "outbound|80||app.local", "outbound|80||dead.local"):
        assert name in rows, sorted(rows)
    rps = float(re.search(r'data-rps="([\d.]+)"', rows["0.0.0.0:80 app-route"]).group(1))
    assert rps > 0
    assert '<td class="err">100.0 %</td>' in rows["0.0.0.0:80 dead-route"]  # every request to it failed (503 UF)
    assert "<td>0.0 %</td>" in rows["0.0.0.0:80 app-route"]
    # The charts: one SVG path per series with traffic, for routes and clusters alike.
    for chart in ("chart-routes-rps", "chart-routes-errors", "chart-routes-p99", "chart-clusters-rps"):
        svg = re.search(rf'<svg id="{chart}"[^>]*>(.*?)</svg>', dom, re.DOTALL)
        assert svg, chart
        series = {html.unescape(n) for n in re.findall(r'<path d="M[^"]+" class="series" stroke="#[0-9a-f]{6}" data-name="([^"]+)"', svg.group(1))}
        wanted = "0.0.0.0:80 app-route" if chart.startswith("chart-routes") else "outbound|80||app.local"
        assert wanted in series, (chart, series)
    assert shot.returncode == 0 and (tmp_path / "admin.png").stat().st_size > 10_000
