"""The page (src/difflab/web/static/: index.html, app.js) in a real browser: headless Chromium
from the distribution's packages, driven by selenium through the system's chromedriver, against
`difflab serve`'s app on a free port. It picks a class, generates, checks the images are the
model's own samples of that seed (and neither blank nor noise), paints a mask with pointer
events on the canvas, inpaints, checks the kept pixels, and saves a screenshot.

Skipped only where no Chromium is installed and the CI variable is unset: CI (.ci/run installs
chromium and chromium-driver) must run it, so there a missing browser fails. Set
DIFFLAB_WEB_SCREENSHOT=path to keep a copy of the screenshot (docs/web/page.png is one), and
DIFFLAB_WEB_CKPT=run to drive the page with that model instead of the test's own.
"""

import base64
import io
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import difflab as dl
from difflab.web import Catalog, Limits, create_app

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
IN_CI = bool(os.environ.get("CI"))
if not IN_CI and not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip("no /usr/bin/chromium and chromedriver here (apt-get install chromium chromium-driver); "
                "CI installs them and runs this test", allow_module_level=True)
if not IN_CI:
    pytest.importorskip("selenium")
import uvicorn  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

# The flags that run Chromium headless in a container with no network and no GPU.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1180"]


@contextmanager
def serving(app):
    """``app`` served by uvicorn in a thread on a free port of 127.0.0.1; yields its address."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not srv.started and time.monotonic() - t0 < 20:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def server(digits_run_dir):
    """The app of `difflab serve --ckpt RUN`, served; (address, catalog)."""
    app = create_app(Catalog([os.environ.get("DIFFLAB_WEB_CKPT") or digits_run_dir]), Limits())
    with serving(app) as url:
        yield url, app.state.catalog


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def image_of(data_url: str) -> np.ndarray:
    head, b64 = data_url.split(",", 1)
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), dtype=np.float64)


def corr(a, b) -> float:
    a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def gallery(driver) -> list:
    return [e.get_attribute("src") for e in driver.find_elements(By.CSS_SELECTOR, ".gallery-item img")]


def test_generate_and_inpaint_in_a_real_browser(server, browser, tmp_path):
    url, catalog = server
    (model,) = catalog.models.values()
    run, label, seed, steps, n = model.run, 3, 7, 20, 4
    wait = WebDriverWait(browser, 30)
    browser.get(url + "/")
    wait.until(lambda d: len(Select(d.find_element(By.ID, "label")).options) == run.num_classes + 1)
    assert browser.find_element(By.ID, "prompt-row").get_attribute("hidden") is not None  # no text model yet
    Select(browser.find_element(By.ID, "label")).select_by_value(str(label))
    for field, value in {"steps": steps, "seed": seed, "n": n}.items():
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(str(value))
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: len(gallery(d)) == n)
    shown = np.stack([image_of(src) for src in gallery(browser)[::-1]])  # the newest first on the page

    # the model's own samples of that class and seed, pixel for pixel (8-bit rounding)
    want = run.sample(n, "ddim", steps, 1.0, label, seed).reshape(n, 8, 8).clamp(-1, 1)
    assert np.array_equal(shown, np.round((want.numpy() + 1) * 127.5))
    x = shown / 127.5 - 1
    assert x.std() > 0.3, "blank images"
    # digits, not noise: each looks like the mean digit of its class (noise: correlation 0 +- 0.13)
    digits, labels = dl.data.load("digits")[:2]
    means = [digits[labels == c].mean(0).numpy() for c in range(10)]
    own = np.mean([corr(xi, means[label]) for xi in x])
    others = np.mean([corr(xi, means[c]) for xi in x for c in range(10) if c != label])
    assert own > 0.4 and own > others + 0.1, (own, others)
    preview = browser.find_element(By.CSS_SELECTOR, ".job img").get_attribute("src")
    assert image_of(preview).shape == (12, 2 + n * 10)  # the last denoised estimates, a grid of n

    # inpaint: the first result into the editor, a stroke across its lower rows, inpaint
    browser.find_elements(By.CSS_SELECTOR, ".edit-btn")[-1].click()  # the oldest: the first sample
    wait.until(lambda d: d.find_element(By.ID, "img2img").is_enabled())
    canvas = browser.find_element(By.ID, "edit-canvas")
    w = canvas.size["width"]
    # offsets from the canvas' centre: from (1/16 W, 10/16 H) to (15/16 W, 10/16 H), then down a row
    ActionChains(browser).move_to_element_with_offset(canvas, -7 * w // 16, w // 8).click_and_hold() \
        .move_by_offset(w // 4, 0).move_by_offset(w // 4, 0).move_by_offset(w // 3, 0) \
        .move_by_offset(0, w // 8).release().perform()
    mask = np.array(browser.execute_script("return Array.from(state.mask)")).reshape(8, 8)
    assert mask[:4].sum() == 0 and mask[5].all() and 8 <= mask.sum() < 40, mask  # the stroke, brush radius 1
    assert browser.find_element(By.ID, "inpaint").is_enabled()
    browser.find_element(By.ID, "inpaint").click()
    wait.until(lambda d: len(gallery(d)) == 2 * n)
    filled = np.stack([image_of(src) for src in gallery(browser)[:n]])
    kept = mask == 0
    assert np.array_equal(filled[:, kept], np.broadcast_to(shown[0][kept], (n, kept.sum())))
    assert (filled[:, mask == 1] != shown[0][mask == 1]).any()  # the masked pixels were drawn anew
    assert not browser.find_element(By.ID, "error").is_displayed()

    # a request the server refuses shows its message on the page: the consistency sampler takes
    # steps + 1 levels of the grid, so not as many steps as the process has (the form allows T)
    Select(browser.find_element(By.ID, "sampler")).select_by_value("consistency")
    box = browser.find_element(By.ID, "steps")
    box.clear()
    box.send_keys(box.get_attribute("max"))
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert f"consistency cannot take {box.get_attribute('max')} steps" in browser.find_element(By.ID, "error").text
    Select(browser.find_element(By.ID, "sampler")).select_by_value("ddim")
    box.clear()
    box.send_keys(str(steps))
    browser.execute_script("document.getElementById('error').hidden = true")

    browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot)) and Image.open(shot).size[0] >= 1000
    if os.environ.get("DIFFLAB_WEB_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["DIFFLAB_WEB_SCREENSHOT"])


def test_a_token_server_an_uploaded_file_image_to_image_and_clips(digits_run_dir, clip_run_dir, browser, tmp_path):
    """Opened as /?token=T (the address `difflab serve --token T` prints), the page keeps the token
    as a cookie and drops it from the address; a file of another size and colour is scaled to the
    model's 8x8 grey in the browser and sent to image-to-image, whose result is the library's.
    The second model makes clips: they come back as GIFs, with no Edit and the editor off."""
    token = "browser-test-token"
    app = create_app(Catalog([digits_run_dir, clip_run_dir]), Limits(), token=token)
    run = app.state.catalog["digits"].run
    wait = WebDriverWait(browser, 30)
    with serving(app) as url:
        browser.get(url + "/")
        assert "needs its token" in browser.find_element(By.TAG_NAME, "body").text  # no token: 401
        browser.get(f"{url}/?token={token}")
        wait.until(lambda d: len(Select(d.find_element(By.ID, "label")).options) == 11)
        assert browser.current_url == url + "/"  # the token left the address bar
        picture = np.zeros((32, 48, 3), dtype=np.uint8)
        picture[8:24, 18:30] = (255, 255, 255)  # a white bar on black, model pixels (2..5, 3..4): a 1 of sorts
        Image.fromarray(picture).save(tmp_path / "one.png")
        browser.find_element(By.ID, "upload").send_keys(str(tmp_path / "one.png"))
        wait.until(lambda d: d.find_element(By.ID, "img2img").is_enabled())
        sent = np.array(browser.execute_script("return Array.from(state.edit.data)")).reshape(8, 8, 4)
        assert (sent[..., 0] == sent[..., 1]).all() and (sent[..., 3] == 255).all()  # grey, opaque
        assert sent[3:5, 3:5, 0].min() > 150 and sent[:, :2, 0].max() < 60 and sent[:, 6:, 0].max() < 60  # the bar
        browser.execute_script("const s = document.getElementById('strength'); s.value = '0.4';"
                               "s.dispatchEvent(new Event('input'))")
        assert browser.find_element(By.ID, "strength-value").text == "0.4"
        Select(browser.find_element(By.ID, "label")).select_by_value("1")
        queue, gate = app.state.queues["cpu"], threading.Event()
        busy = queue.submit(lambda progress: gate.wait(20) and [], 1)  # another client's job holds the device
        while queue.status(busy.id)["state"] != "running":
            time.sleep(0.01)
        browser.find_element(By.ID, "img2img").click()
        wait.until(lambda d: any("img2img: waiting, position 1 in line" in e.text  # the page shows its place
                                 for e in d.find_elements(By.CSS_SELECTOR, ".job span")))
        gate.set()
        wait.until(lambda d: len(gallery(d)) == 4)  # count 4 by default
        got = np.stack([image_of(src) for src in gallery(browser)[::-1]])
        x = torch.from_numpy(sent[..., 0].astype(np.float32) / 127.5 - 1).reshape(1, 64).expand(4, 64)
        want = dl.editing.img2img(run.ema_model, run.proc, x, 0.4, "ddim", 50, cond=torch.full((4,), 1),
                                  generator=torch.Generator().manual_seed(0)).reshape(4, 8, 8)
        assert np.array_equal(got, np.round((want.clamp(-1, 1).numpy() + 1) * 127.5))

        Select(browser.find_element(By.ID, "model")).select_by_value("moving")
        assert browser.find_element(By.ID, "edit-note").is_displayed()
        assert not browser.find_element(By.ID, "img2img").is_enabled()
        for field, value in {"steps": 3, "n": 1}.items():
            box = browser.find_element(By.ID, field)
            box.clear()
            box.send_keys(str(value))
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: len(gallery(d)) == 5)
        newest = browser.find_elements(By.CSS_SELECTOR, ".gallery-item")[0]
        assert newest.find_element(By.TAG_NAME, "img").get_attribute("src").startswith("data:image/gif;base64,")
        assert newest.find_element(By.TAG_NAME, "a").get_attribute("download").endswith("-seed0-0.gif")
        assert not newest.find_elements(By.CSS_SELECTOR, ".edit-btn")
