"""Browser test of `mt3 serve`'s upload page: headless Chromium driven by Selenium (Debian's chromium +
chromium-driver) opens `/`, uploads a WAV, waits until the piano roll is drawn and the MIDI download link appears, and
saves a screenshot."""

from __future__ import annotations

import base64

import pytest
from test_inference import build_tiny_model
from test_server import running_server

from mt3 import inference

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    tiny = build_tiny_model(tmp_path_factory)
    im = inference.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings)
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
    assert "program" in browser.find_element(By.ID, "legend").text  # instrument legend
    # the canvas really holds coloured pixels (not just the white background)
    png = base64.b64decode(browser.execute_script(
        "return document.getElementById('roll').toDataURL('image/png').split(',')[1];"))
    from io import BytesIO

    import numpy as np
    from matplotlib.image import imread

    pixels = imread(BytesIO(png))
    assert (np.abs(pixels[..., :3] - 1.0).sum(axis=-1) > 0.1).mean() > 0.001
    # the link's blob is the MIDI the server made
    midi = browser.execute_async_script(
        "const done = arguments[0]; fetch(document.getElementById('midi-link').href)"
        ".then(r => r.arrayBuffer()).then(b => done(Array.from(new Uint8Array(b).slice(0, 4))));")
    assert bytes(midi) == b"MThd"
    shot = tmp_path / "upload_page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
