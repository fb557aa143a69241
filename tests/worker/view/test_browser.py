"""`kronos-rt view` in a real browser: headless Debian chromium (selenium + chromium-driver)
loads the page while a replay runs through the embedded broker and a real worker (the parity
checkpoint, sampled, with scores and calibrated bands). The symbols appear, the chart draws
candles, the mean path and the bands, and a forecast published after the page loaded shows up
without a reload. The screenshot is kept: the test's tmp dir and runs/test-artefacts/view.png.
Skipped only where chromium or chromium-driver is not installed (.ci/run installs both)."""
from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path

import pytest

from tests.worker.streams import make_settings, names, running_worker
from worker.adapters.kafka import ensure_topics
from worker.tools import TAPE
from worker.tools.replay import prepare, replay
from worker.view.app import ViewServer
from worker.view.feed import Feed
from worker.view.state import ViewState

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
ARTEFACT = ROOT / "runs" / "test-artefacts" / "view.png"
FIRST_BARS = 64  # per symbol: forecasts from the 32nd bar on (the e2e settings' min_history)

# Pixels of the chart's canvases by colour: candles (up/down), the mean path, the raw band's fill
# (blue at 18 % on white) and the calibrated band's (orange at 16 %), as app.js draws them.
COUNT_PIXELS = """
const counts = {candles: 0, mean: 0, raw: 0, calibrated: 0};
for (const c of document.querySelectorAll('#chart canvas')) {
  if (!c.width || !c.height) continue;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 0; i < d.length; i += 4) {
    const r = d[i], g = d[i + 1], b = d[i + 2], a = d[i + 3];
    if (a < 200) continue;
    const near = (R, G, B, tol) => Math.abs(r - R) + Math.abs(g - G) + Math.abs(b - B) < tol;
    if (near(38, 166, 154, 40) || near(239, 83, 80, 40)) counts.candles++;
    else if (near(31, 79, 209, 40)) counts.mean++;
    else if (near(215, 223, 247, 12)) counts.raw++;
    else if (near(251, 234, 220, 12)) counts.calibrated++;
  }
}
return counts;
"""


def browser():
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)")
    selenium = pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,800", "--hide-scrollbars"):
        options.add_argument(arg)
    assert selenium.__version__
    return webdriver.Chrome(options=options, service=Service(driver))


async def js_until(driver, script: str, cond, timeout: float = 30.0):
    """Run `script` in the page until cond(result) holds; the last result."""
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(driver.execute_script, script)
        if cond(got):
            return got
        assert time.monotonic() < deadline, f"page never got there: {script} -> {got!r}"
        await asyncio.sleep(0.2)


async def until(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_page_draws_forecasts_and_takes_new_ones_live(broker, redis_url, redis_prefix, tmp_path):
    topics = names("view")
    scores = f"scores-view-{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker, {topics["bars_topic"]: 2, topics["forecasts_topic"]: 2, scores: 1})
    first = prepare(TAPE, fanout=2, limit=FIRST_BARS)
    later = prepare(TAPE, fanout=2, skip=FIRST_BARS, limit=2)
    symbols = sorted(set(first["symbol"]))
    # Sampled paths (bands) and a scores topic with a short calibration (calibrated bands).
    settings = make_settings(broker, redis_url, redis_prefix, topics, sample_count=4, top_k=0, top_p=1.0,
                             scores_topic=scores, calibration_window=40, calibration_min_scores=3)
    state = ViewState()
    feed = Feed(state, broker, {"bars": topics["bars_topic"], "forecasts": topics["forecasts_topic"],
                                "scores": scores}, refresh_s=0.5)
    server = ViewServer(state, feed, port=0)
    url = await server.start()
    driver = None
    try:
        async with running_worker(settings):
            await replay(first, broker, topics["bars_topic"])
            last_as_of = first["time"].max().strftime("%Y-%m-%dT%H:%M:%S")
            await until(lambda: all(s in state.symbols and state.summary(s)["as_of_raw"] == last_as_of
                                    for s in symbols))
            driver = await asyncio.to_thread(browser)
            await asyncio.to_thread(driver.get, url)
            await js_until(driver, "return window.kronosView.symbols", lambda n: n == len(symbols))
            listed = await asyncio.to_thread(driver.execute_script,
                                             "return [...document.querySelectorAll('#symbols tr[data-symbol]')]"
                                             ".map(r => r.dataset.symbol)")
            assert listed == symbols
            shown = await js_until(driver, "return window.kronosView",
                                   lambda v: v["latestAsOf"] == last_as_of and v["bandPoints"] > 0)
            assert shown["symbol"] == symbols[0] and shown["bars"] == FIRST_BARS and shown["forecasts"] >= 10
            pixels = await js_until(driver, COUNT_PIXELS, lambda c: c["candles"] > 500 and c["mean"] > 20
                                    and c["raw"] > 30 and c["calibrated"] > 300)
            print("chart pixels by colour:", pixels)
            calibrated = await asyncio.to_thread(
                driver.execute_script, "return document.getElementById('detail').textContent")
            assert "calibrated [" in calibrated and "latency" in calibrated

            # A forecast published now reaches the open page: no reload (the marker survives).
            await asyncio.to_thread(driver.execute_script, "window.sameDocument = 42")
            await replay(later, broker, topics["bars_topic"])
            newest = later["time"].max().strftime("%Y-%m-%dT%H:%M:%S")
            live = await js_until(driver, "return [window.sameDocument, window.kronosView.latestAsOf]",
                                  lambda v: v[1] == newest)
            assert live[0] == 42
            # the other symbol's row in the list moves on too
            await js_until(driver, f"return document.querySelector('#symbols tr[data-symbol=\"{symbols[1]}\"]')"
                                   ".textContent", lambda text: newest in text)
            await asyncio.sleep(0.5)
            png = await asyncio.to_thread(driver.get_screenshot_as_png)
            (tmp_path / "view.png").write_bytes(png)
            ARTEFACT.parent.mkdir(parents=True, exist_ok=True)
            ARTEFACT.write_bytes(png)
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, pixels

            # An unknown symbol in the URL: a clear page, and the server goes on.
            await asyncio.to_thread(driver.get, url + "symbol/NO.SUCH")
            body = await asyncio.to_thread(driver.execute_script, "return document.body.innerText")
            assert "Unknown symbol" in body and symbols[0] in body
    finally:
        if driver is not None:
            await asyncio.to_thread(driver.quit)
        await server.stop()
    assert state.stats["invalid"] == {}
