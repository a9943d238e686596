"""Browser tests of `mt3 serve`'s upload page: headless Chromium driven by Selenium (Debian's chromium +
chromium-driver) opens `/`, uploads a WAV, waits until the piano roll is drawn and the MIDI download link appears
(axes with time and pitch ticks, a legend of GM instrument names), checks the button is disabled while the request is in
flight and that errors show on one line, and saves screenshots (to $MT3_SCREENSHOT_DIR when set, to look at)."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest
import requests
from helpers import build_tiny_model, running_server

from mt3 import model_loading, plotting

# end-to-end: `scripts/test.sh --fast` (-m 'not slow') leaves these out
pytestmark = pytest.mark.slow

GM_NAMES = [plotting.instrument_label(program, False) for program in range(128)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    tiny = build_tiny_model(tmp_path_factory)
    im = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings)
    with running_server(im) as url:
        yield url, tiny


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_page_draws_piano_roll_and_offers_midi(base_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, tiny = base_url
    browser.get(f"{url}/")
    assert "mt3" in browser.title
    browser.find_element(By.ID, "file").send_keys(str(tiny.wav(3)))
    browser.find_element(By.ID, "go").click()
    link = WebDriverWait(browser, 90).until(ec.presence_of_element_located((By.ID, "midi-link")))
    assert link.get_attribute("download") == "track3.mid" and link.get_attribute("href").startswith("blob:")
    canvas = browser.find_element(By.ID, "roll")
    drawn = int(canvas.get_attribute("data-drawn"))
    assert drawn > 0 and f"{drawn} notes" in browser.find_element(By.ID, "download").text
    # axes: labels and ticks, drawn in the margins left of and below the plot
    assert (canvas.get_attribute("data-x-label"), canvas.get_attribute("data-y-label")) == ("time (s)", "pitch")
    x_ticks = [float(t) for t in canvas.get_attribute("data-x-ticks").split(",")]
    import soundfile

    seconds = soundfile.info(str(tiny.wav(3))).duration
    assert x_ticks[0] == 0.0 and x_ticks[-1] <= seconds < x_ticks[-1] + (x_ticks[1] - x_ticks[0])
    y_ticks = canvas.get_attribute("data-y-ticks").split(",")
    assert y_ticks and all(re.fullmatch(r"[A-G]#?-?\d", t) for t in y_ticks), y_ticks
    # legend: GM instrument names of the transcribed programs, in GM program order with drums last (as the PNG)
    notes = requests.post(f"{url}/transcribe?format=json", files={"file": ("track3.wav", tiny.wav(3).read_bytes())},
                          timeout=120).json()["notes"]
    keys = sorted({(n["is_drum"], 0 if n["is_drum"] else n["program"]) for n in notes})
    expected = [plotting.instrument_label(program, is_drum) for is_drum, program in keys]
    legend = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#legend span")]
    assert legend == expected and not any(label.startswith("program") for label in legend)
    assert set(legend) <= {*GM_NAMES, "Drums"}
    # the canvas really holds coloured pixels (not just the white background)
    png = base64.b64decode(browser.execute_script(
        "return document.getElementById('roll').toDataURL('image/png').split(',')[1];"))
    from io import BytesIO

    import numpy as np
    from matplotlib.image import imread

    pixels = imread(BytesIO(png))
    inked = np.abs(pixels[..., :3] - 1.0).sum(axis=-1) > 0.1
    assert inked.mean() > 0.001
    assert inked[:-42, :40].any() and inked[-30:, 60:].any()  # pitch names left of the plot, times below it
    # the link's blob is the MIDI the server made
    midi = browser.execute_async_script(
        "const done = arguments[0]; fetch(document.getElementById('midi-link').href)"
        ".then(r => r.arrayBuffer()).then(b => done(Array.from(new Uint8Array(b).slice(0, 4))));")
    assert bytes(midi) == b"MThd"
    # and the other files `mt3 transcribe` writes, from the same request: CSV and JSON as the server's, a PNG
    served_csv = requests.post(f"{url}/transcribe?format=csv", files={"file": ("track3.wav", tiny.wav(3).read_bytes())},
                               timeout=120).text
    fetch_text = ("const done = arguments[arguments.length - 1]; fetch(document.getElementById(arguments[0]).href)"
                  ".then(r => r.text()).then(done);")
    assert browser.execute_async_script(fetch_text, "csv-link") == served_csv
    import json

    assert json.loads(browser.execute_async_script(fetch_text, "json-link")) == notes
    assert [browser.find_element(By.ID, i).get_attribute("download") for i in ("csv-link", "json-link", "png-link")] \
        == ["track3.notes.csv", "track3.notes.json", "track3.png"]
    png_head = browser.execute_async_script(
        "const done = arguments[0]; fetch(document.getElementById('png-link').href)"
        ".then(r => r.arrayBuffer()).then(b => done(Array.from(new Uint8Array(b).slice(0, 4))));")
    assert bytes(png_head) == b"\x89PNG"
    shot = _screenshot_dir(tmp_path) / "upload_page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def _screenshot_dir(tmp_path) -> Path:
    out = Path(os.environ.get("MT3_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


HOLD_FETCH = """
window.__release = null; window.__calls = 0;
const realFetch = window.fetch.bind(window);
window.fetch = (...args) => new Promise(resolve => {
  window.__calls += 1; window.__release = () => resolve(realFetch(...args)); });
"""


def test_button_is_disabled_while_transcribing(base_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, tiny = base_url
    browser.get(f"{url}/")
    browser.execute_script(HOLD_FETCH)  # the request stays in flight until the test releases it
    button = browser.find_element(By.ID, "go")
    assert button.is_enabled()
    browser.find_element(By.ID, "file").send_keys(str(tiny.wav(4)))
    button.click()
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return window.__release !== null"))
    assert not button.is_enabled()
    assert browser.find_element(By.ID, "status").text == "Transcribing track4.wav ..."
    button.click()  # a second click while disabled sends nothing
    browser.execute_script("window.__release()")
    WebDriverWait(browser, 90).until(ec.presence_of_element_located((By.ID, "midi-link")))
    assert button.is_enabled() and browser.find_element(By.ID, "status").text == "Done: track4.wav"
    assert browser.execute_script("return window.__calls") == 1


def _status_after(browser, tmp_path, name: str) -> tuple[str, int, int]:
    """(text, rendered height, line height) of the status line once it shows an error."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 60).until(lambda d: "error" in (status.get_attribute("class") or ""))
    height, line = browser.execute_script(
        "const s = document.getElementById('status'); "
        "return [s.getBoundingClientRect().height, parseFloat(getComputedStyle(s).lineHeight) || 20];")
    browser.save_screenshot(str(_screenshot_dir(tmp_path) / f"upload_page_{name}.png"))
    return status.text, height, line


def test_errors_show_on_one_line(base_url, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, tiny = base_url
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + b"this is not audio " * 40)
    browser.get(f"{url}/")
    browser.find_element(By.ID, "file").send_keys(str(broken))
    browser.find_element(By.ID, "go").click()
    text, height, line = _status_after(browser, tmp_path, "error")
    assert text.startswith("Error: broken.wav: unreadable, corrupt or unsupported audio format")
    assert "\n" not in text and "object at 0x" not in text and height < 1.6 * line
    assert browser.find_element(By.ID, "go").is_enabled()
    assert not browser.find_elements(By.ID, "midi-link")
    # a multi-line plain-text error (a proxy's 502 page) is still one line, whitespace collapsed
    browser.execute_script(
        "window.fetch = async () => new Response('Bad gateway\\n\\n  upstream   went away\\n', "
        "{status: 502, headers: {'Content-Type': 'text/plain'}});")
    browser.execute_script("document.getElementById('status').className = '';")
    browser.find_element(By.ID, "file").send_keys(str(tiny.wav(3)))
    browser.find_element(By.ID, "go").click()
    text, height, line = _status_after(browser, tmp_path, "proxy_error")
    assert text == "Error: Bad gateway upstream went away" and height < 1.6 * line
