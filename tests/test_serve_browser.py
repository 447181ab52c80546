"""The live page in a real browser (headless Debian chromium + chromedriver, driven by Selenium)
against a real ``diffusionlab serve`` subprocess on the tiny test checkpoints.

``test_browser_smoke`` (default suite): one streamed generation, its size, a byte-identical
repeat from the same seed, the scrubber, a LoRA adapter offered with its base and applied, a
refused request's message, no outside hosts and a clean console. ``test_browser_tour`` (``-m e2e``, ``make test-e2e``): every view (generate on
both models, scrub and replay, guidance, comparison, autoguidance, forward process with an
upload, img2img, inpainting with a dragged / uploaded / half mask, tokens and architecture), a
full queue and a queued job, a server with --token and one with no checkpoints, with a
screenshot of each view under ``$DL_E2E_OUT`` (default runs/e2e). The JSON API itself is tested
in test_serve_api.py; these tests check what the page shows. The page keeps ``window.__dl``
for them: the step counters it showed (``steps``), its event log and finished runs."""
from __future__ import annotations

import base64
import io
import json
import math
import os
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[1]
WAIT = 60          # seconds: generous, the machine may be busy; nothing asserts on time
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1000")


@pytest.fixture
def browser(tmp_path):
    """A headless chromium with its own empty profile and the browser console recorded."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium + chromium-driver (Debian) not installed: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    profile = tmp_path / "chrome-profile"
    profile.mkdir()
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------- page helpers


def tid(name: str) -> str:
    return f'[data-testid="{name}"]'


def find(d, name: str):
    from selenium.webdriver.common.by import By

    return d.find_element(By.CSS_SELECTOR, tid(name))


def find_all(d, name: str):
    from selenium.webdriver.common.by import By

    return d.find_elements(By.CSS_SELECTOR, tid(name))


def texts(d, name: str) -> list[str]:
    """The text of every element ``name``, read at once (the page may re-render between reads)."""
    return d.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", tid(name))


def wait(d, cond, timeout: float = WAIT, what: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, timeout, poll_frequency=0.05).until(lambda drv: cond(drv), message=what)


def open_page(d, url: str, view: str = "") -> None:
    d.get(url + (f"#{view}" if view else ""))
    wait(d, lambda drv: drv.execute_script("return document.body.dataset.ready") in ("true", "error"), what="page ready")
    assert d.execute_script("return document.body.dataset.ready") == "true", find(d, "error-message").text


def set_value(d, name: str, value) -> None:
    """Set a field as typing would (value, then its input and change events)."""
    d.execute_script("const e = arguments[0]; e.value = arguments[1];"
                     "e.dispatchEvent(new Event('input', {bubbles: true}));"
                     "e.dispatchEvent(new Event('change', {bubbles: true}));", find(d, name), str(value))


def choose(d, name: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(find(d, name)).select_by_value(value)


def check(d, name: str, on: bool = True) -> None:
    box = find(d, name)
    if box.is_selected() != on:
        box.click()


def click(d, name: str) -> None:
    el = find(d, name)
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    wait(d, lambda drv: el.is_enabled(), what=f"{name} enabled")
    el.click()


def runs_done(d) -> int:
    return d.execute_script("return window.__dl.runs")


def errors_shown(d) -> int:
    return d.execute_script("return window.__dl.errors")


def act(d, button: str, done, what: str) -> None:
    """Click ``button`` and wait until ``done(driver)`` or a new error message (which fails)."""
    errors = errors_shown(d)
    click(d, button)
    wait(d, lambda drv: done(drv) or errors_shown(drv) > errors, what=what)
    assert done(d), find(d, "error-message").text


def generate(d) -> None:
    """Click generate and wait for its final image (window.__dl.runs counts finished runs)."""
    before = runs_done(d)
    act(d, "generate-button", lambda drv: runs_done(drv) > before, "generation")


def data_url_png(src: str):
    from PIL import Image

    assert src.startswith("data:image/png;base64,"), src[:40]
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


def grid_size(batch: int, side: int = 32) -> tuple[int, int]:
    """(width, height) of evaluation.viz.make_grid's layout as the server calls it."""
    nrow = max(1, math.ceil(math.sqrt(batch)))
    pad = 1 if batch > 1 else 0
    cols = min(nrow, batch)
    rows = math.ceil(batch / cols)
    return cols * (side + pad) + pad, rows * (side + pad) + pad


def fetch(url: str, href: str) -> bytes:
    with urllib.request.urlopen(urllib.parse.urljoin(url, href), timeout=WAIT) as r:
        assert r.status == 200
        return r.read()


def api(url: str, path: str, body: dict | None = None) -> dict:
    """The server's own answer (GET, or POST of ``body``), to compare the page with."""
    req = urllib.request.Request(urllib.parse.urljoin(url, path), data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=WAIT) as r:
        return json.load(r)


def chip_text(token: str) -> str:
    return "\u2423" if token == " " else token                # a space shown as an open box


def console_errors(d, allow: tuple[str, ...] = ()) -> list[str]:
    """SEVERE browser-console entries, less the expected refusals (their URL in ``allow``)."""
    return [e["message"] for e in d.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allow)]


def outside_refs(d, url: str) -> list[str]:
    origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(url))
    refs = d.execute_script(
        "return [...document.querySelectorAll('[src],[href]')].flatMap(e => "
        "[e.getAttribute('src'), e.getAttribute('href'), e.src, e.href]).filter(v => typeof v === 'string' && v)")
    return [r for r in refs if r.startswith(("http:", "https:", "//")) and not r.startswith(origin + "/")]


def refused(d, button: str) -> str:
    """Click ``button``; the message a new error shows."""
    errors = errors_shown(d)
    click(d, button)
    wait(d, lambda drv: errors_shown(drv) > errors, what="an error message")
    assert find(d, "error-message").is_displayed()
    return find(d, "error-message").text


def setup_text_run(d, prompt="a handwritten three", sampler="euler", steps=8, seed=5, batch=2) -> None:
    choose(d, "checkpoint-select", "text")
    set_value(d, "prompt", prompt)
    choose(d, "sampler", sampler)
    set_value(d, "steps", steps)
    set_value(d, "seed", seed)
    check(d, "same-seed", True)
    set_value(d, "batch", batch)


# ---------------------------------------------------------------- the default suite


def test_browser_smoke(serve_runs, browser):
    from serve_helpers import server

    d = browser
    with server(serve_runs) as (url, _proc):
        open_page(d, url)
        assert {o.get_attribute("value") for o in find(d, "checkpoint-select").find_elements("tag name", "option")} \
            >= {"text", "class"}
        setup_text_run(d)
        generate(d)
        # the run streamed: its step events were shown one by one before the final image
        log = d.execute_script("return window.__dl.log")
        steps = d.execute_script("return window.__dl.steps")
        assert log[-1] == "done" and log[-2] == "step"
        assert log[log.index("submit") + 1:-1].count("step") >= 4 and len(steps) >= 4
        assert [v.split(" / ")[0] for v in steps] == [f"step {i}" for i in range(1, 9)]     # one by one, in order
        assert steps[-1].startswith("step 8 / 8") and "NFE" in steps[-1]
        assert find(d, "step-counter").text.startswith("done")
        final = find(d, "final-image")
        assert final.is_displayed()
        assert data_url_png(final.get_attribute("src")).size == grid_size(2)
        assert d.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", final) == list(grid_size(2))
        assert "diffusionlab sample" in find(d, "command-line").text and "--seed 5" in find(d, "command-line").text
        first_href = find(d, "download-png").get_attribute("href")
        first = fetch(url, first_href)

        generate(d)                            # same seed: the same bytes
        second_href = find(d, "download-png").get_attribute("href")
        assert second_href != first_href
        assert fetch(url, second_href) == first

        # scrub: the frame, its sigma and the marker on the sigma plot follow the slider
        assert find(d, "scrubber").is_displayed()
        text_end = find(d, "scrub-sigma").text
        marker_end = find(d, "sigma-marker").get_attribute("cx")
        assert text_end.startswith("step 8 / 8")
        set_value(d, "scrub-slider", 0)
        assert find(d, "scrub-sigma").text.startswith("step 1 / 8") and find(d, "scrub-sigma").text != text_end
        assert find(d, "sigma-marker").get_attribute("cx") != marker_end
        assert find(d, "scrub-xt").get_attribute("src").startswith("data:image/png")

        # a LoRA adapter: offered only with its base, sent with its scale, named in the command line
        assert not find(d, "lora-row").is_displayed()                  # the text model has no adapter
        choose(d, "checkpoint-select", "class")
        assert find(d, "lora-row").is_displayed() and not find(d, "lora-scale").is_enabled()
        assert [o.get_attribute("value") for o in find(d, "lora-select").find_elements("tag name", "option")] \
            == ["", "lora-three"]
        choose(d, "lora-select", "lora-three")
        set_value(d, "lora-scale", 0.5)
        assert find(d, "lora-scale-range").get_attribute("value") == "0.5"
        generate(d)
        assert f"--lora {serve_runs}/lora-three:0.5 " in find(d, "command-line").text
        choose(d, "checkpoint-select", "text")
        assert not find(d, "lora-row").is_displayed()

        assert not outside_refs(d, url)
        assert not console_errors(d)

        # a request over the limits: the server's message on the page
        set_value(d, "batch", 17)
        msg = refused(d, "generate-button")
        assert "batch" in msg and "16" in msg
        assert not console_errors(d, allow=("/api/generate",))


# ---------------------------------------------------------------- the whole tour (make test-e2e)


def _png_file(path: Path, size=(48, 40)) -> Path:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, "black")
    ImageDraw.Draw(im).ellipse((8, 6, size[0] - 8, size[1] - 6), outline="white", width=5)
    im.save(path)
    return path


def _shot(d, out: Path, name: str, view: str, then=None) -> None:
    """A screenshot of the whole page (the window made as tall as the page); ``then``: called
    once the page is laid out, before the shot (e.g. to hover something)."""
    if not find(d, f"view-{view}").is_displayed():
        click(d, f"tab-{view}")
    d.execute_script("window.scrollTo(0, 0)")
    height = d.execute_script("return Math.max(document.body.scrollHeight, 1000)")
    d.set_window_size(1400, min(int(height) + 140, 3000))
    if then:
        then()
    assert d.save_screenshot(str(out / f"serve-{name}.png"))
    d.set_window_size(1400, 1000)


@pytest.mark.e2e
def test_browser_tour(serve_runs, browser, tmp_path):
    from serve_helpers import server

    out = Path(os.environ.get("DL_E2E_OUT") or REPO / "runs" / "e2e")
    out.mkdir(parents=True, exist_ok=True)
    d = browser
    try:
        with server(serve_runs, "--queue", "2") as (url, _proc):
            _tour(d, url, out, tmp_path)
            _queue(d, url)
            assert not outside_refs(d, url)
            expected = ("/api/generate", "/api/tokens")      # the refused requests' own entries
            assert not console_errors(d, allow=expected)
        with server(serve_runs, "--token", "s3cret-T") as (url, _proc):
            _token(d, url)
        empty = tmp_path / "no-runs"
        empty.mkdir()
        with server(empty) as (url, _proc):
            open_page(d, url)
            assert "make demo" in find(d, "checkpoint-info").text and "--out runs/NAME" in find(d, "checkpoint-info").text
            assert not find(d, "generate-button").is_enabled()
    except Exception:
        d.save_screenshot(str(out / "serve-failure.png"))       # what the page showed
        raise


def _queue(d, url: str) -> None:
    """A busy server: a full queue's 503 as "queue full, retry in N s", then the page's job
    waiting its turn ("position N in queue") and running once the jobs ahead are cancelled."""
    click(d, "tab-generate")
    long = {"checkpoint": "class", "sampler": "euler", "steps": 500, "batch": 16, "seed": 1}
    jobs = [api(url, "api/generate", long)["job"] for _ in range(3)]    # one runs, two wait: full
    try:
        choose(d, "checkpoint-select", "class")
        set_value(d, "steps", 4)
        set_value(d, "batch", 1)
        msg = refused(d, "generate-button")
        assert msg.startswith("queue full, retry in ") and " s " in msg, msg
        cancel(url, jobs.pop())
        before = runs_done(d)
        click(d, "generate-button")
        wait(d, lambda drv: find(drv, "queue-position").text == "position 2 in queue", what="queued behind two")
        assert not find(d, "error-message").is_displayed()
        cancel(url, jobs.pop())
        wait(d, lambda drv: find(drv, "queue-position").text.startswith("position 1 in queue"), what="moved up")
        cancel(url, jobs.pop())
        wait(d, lambda drv: runs_done(drv) > before, what="ran once the queue emptied")
        assert not find(d, "queue-position").is_displayed() and find(d, "step-counter").text.startswith("done")
    finally:
        for job in jobs:
            cancel(url, job)


def _token(d, url: str) -> None:
    """A server with --token: the page's requests carry ?token= (so do its download links and
    its event stream, which cannot send headers). The page's own assets (index.html's
    <script>/<link>) cannot carry it, so the browser sends X-Token for everything here."""
    d.execute_cdp_cmd("Network.enable", {})
    d.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"X-Token": "s3cret-T"}})
    try:
        open_page(d, url + "?token=s3cret-T")
        setup_text_run(d, steps=4, batch=1)
        generate(d)
        href = find(d, "download-png").get_attribute("href")
        assert "token=s3cret-T" in href
        assert fetch(url, href).startswith(b"\x89PNG")          # no header here: the query carries it
    finally:
        d.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})


def cancel(url: str, job: str) -> None:
    req = urllib.request.Request(urllib.parse.urljoin(url, f"api/jobs/{job}"), method="DELETE")
    urllib.request.urlopen(req, timeout=WAIT).close()


def _tour(d, url: str, out: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    open_page(d, url)

    # ---- generate on the text model, streamed
    setup_text_run(d, steps=10, batch=4)
    generate(d)
    assert len(d.execute_script("return window.__dl.steps")) >= 4
    assert data_url_png(find(d, "final-image").get_attribute("src")).size == grid_size(4)
    assert find(d, "download-gif").get_attribute("href").endswith("denoising.gif")
    _shot(d, out, "generate", "generate")

    # ---- scrub and replay
    click(d, "step-back")
    assert find(d, "scrub-sigma").text.startswith("step 9 / 10")
    set_value(d, "scrub-slider", 3)
    assert find(d, "scrub-sigma").text.startswith("step 4 / 10")
    click(d, "step-forward")
    assert find(d, "scrub-sigma").text.startswith("step 5 / 10")
    click(d, "play-button")
    wait(d, lambda drv: find(drv, "scrub-sigma").text.startswith("step 10 / 10"), what="replay reaches the end")
    click(d, "play-button")                # from the start again, then paused
    click(d, "pause-button")
    paused = find(d, "scrub-slider").get_attribute("value")
    assert int(paused) < 9 and "on" not in find(d, "play-button").get_attribute("class")
    # paused: the frame stays put over several of the replay's 180 ms ticks
    later = d.execute_async_script("const done = arguments[0]; setTimeout(() => "
                                   "done(document.querySelector('[data-testid=scrub-slider]').value), 800)")
    assert later == paused
    set_value(d, "scrub-slider", 4)
    assert find(d, "sigma-marker").get_attribute("data-step") == "4"
    _shot(d, out, "scrub", "generate")

    # ---- the guidance view at the scrubbed step
    act(d, "guidance-button", lambda drv: find(drv, "guidance-out").is_displayed(), "guidance view")
    for name in ("guidance-uncond", "guidance-cond", "guidance-diff", "guidance-guided", "guidance-x0"):
        assert find(d, name).get_attribute("src").startswith("data:image/png"), name
    assert "c_neg" in find(d, "guidance-formula").text and "step 5" in find(d, "guidance-meta").text
    _shot(d, out, "guidance", "generate")

    # ---- comparison: two guidance scales from the same seed
    choose(d, "compare-what", "guidance")
    set_value(d, "compare-value", "6")
    set_value(d, "guidance", "1")
    done = runs_done(d)
    act(d, "compare-button", lambda drv: find(drv, "compare-out").is_displayed(), "comparison")
    assert runs_done(d) == done            # the comparison leaves the generate result alone
    assert "guidance 1" in find(d, "compare-left-label").text and "guidance 6" in find(d, "compare-right-label").text
    assert "--guidance 1" in find(d, "compare-left-command").text
    assert "--guidance 6" in find(d, "compare-right-command").text
    assert find(d, "compare-left").get_attribute("src") != find(d, "compare-right").get_attribute("src")
    _shot(d, out, "compare", "generate")
    set_value(d, "guidance", "")

    # ---- autoguidance (the text model has a guide snapshot)
    assert find(d, "autoguidance").is_enabled()
    set_value(d, "autoguidance", "2")
    generate(d)
    assert "--autoguidance 2" in find(d, "command-line").text
    set_value(d, "autoguidance", "")

    # ---- an over-limit prompt: the server's message
    set_value(d, "prompt", "x" * 1100)
    assert "1024" in refused(d, "generate-button")
    set_value(d, "prompt", "a handwritten three")

    # ---- the class model: a class and a negative class
    choose(d, "checkpoint-select", "class")
    assert not find(d, "prompt").is_displayed() and find(d, "class").is_displayed()
    assert not find(d, "autoguidance").is_enabled()
    choose(d, "class", "7")
    choose(d, "negative-class", "1")
    set_value(d, "guidance", "3")
    set_value(d, "batch", 4)
    generate(d)
    assert not find(d, "error-message").is_displayed()      # cleared by the successful run
    cmd = find(d, "command-line").text
    assert "--class 7" in cmd and "--negative-class 1" in cmd and "--guidance 3" in cmd
    act(d, "guidance-button", lambda drv: "negative condition" in find(drv, "guidance-meta").text, "guidance, c_neg")
    _shot(d, out, "class", "generate")
    set_value(d, "guidance", "")

    # ---- the forward process: slide t, change the schedule, upload a PNG
    click(d, "tab-forward")
    wait(d, lambda drv: "abar" in find(drv, "forward-stats").text, what="forward view")
    click(d, "forward-digit-3")
    set_value(d, "forward-t", 600)
    wait(d, lambda drv: find(drv, "forward-stats").text.startswith("t = 600 / 1000 (linear)"), what="t slid")
    linear = find(d, "forward-stats").text
    marker = d.find_element("css selector", tid("forward-marker"))
    assert marker.get_attribute("data-t") == "600"
    choose(d, "forward-schedule", "cosine")
    wait(d, lambda drv: "(cosine)" in find(drv, "forward-stats").text, what="schedule changed")
    assert find(d, "forward-stats").text != linear
    set_value(d, "forward-t", 0)
    wait(d, lambda drv: find(drv, "forward-stats").text.startswith("t = 0 "), what="t = 0")
    assert "abar = 1" in find(d, "forward-stats").text
    upload = _png_file(tmp_path / "ring.png")
    before = find(d, "forward-x0").get_attribute("src")
    find(d, "forward-upload").send_keys(str(upload))
    wait(d, lambda drv: find(drv, "forward-x0").get_attribute("src") != before, what="upload shown")
    set_value(d, "forward-t", 250)
    wait(d, lambda drv: find(drv, "forward-stats").text.startswith("t = 250 "), what="upload noised")
    assert find(d, "forward-plot").find_elements("css selector", "polyline")
    _shot(d, out, "forward", "forward")
    big = tmp_path / "big.png"                                # refused before it is sent
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2 * 1024 * 1024 + 10))
    errors = errors_shown(d)
    find(d, "forward-upload").send_keys(str(big))
    wait(d, lambda drv: errors_shown(drv) > errors, what="too big an upload")
    assert "at most 2,097,152 bytes" in find(d, "error-message").text

    # ---- img2img on the text model
    choose(d, "checkpoint-select", "text")
    click(d, "tab-edit")
    assert find(d, "prompt").is_displayed()                  # the shared fields moved here
    choose(d, "edit-mode", "img2img")
    choose(d, "edit-digit", "5")
    set_value(d, "edit-strength", "0.7")
    set_value(d, "batch", 1)
    act(d, "edit-button", lambda drv: "diffusionlab img2img" in find(drv, "edit-command").text, "img2img")
    assert "--strength 0.7" in find(d, "edit-command").text
    assert find(d, "edit-live-xt").get_attribute("src").startswith("data:image/png")
    assert data_url_png(find(d, "edit-result").get_attribute("src")).size == grid_size(1)
    _shot(d, out, "img2img", "edit")

    # ---- inpainting: a rectangle dragged on the mask canvas, then a half
    choose(d, "edit-mode", "inpaint")
    choose(d, "mask-mode", "rect")
    canvas = find(d, "mask-canvas")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    # the canvas is 256 CSS px over 32 model px (8 a pixel): from (44, 52) to (204, 164) px, mid-pixel
    ActionChains(d).move_to_element_with_offset(canvas, -84, -76).click_and_hold() \
        .move_by_offset(80, 60).move_by_offset(80, 52).release().perform()
    info = find(d, "mask-info").text
    assert "[5, 6, 26, 21]" in info, info
    set_value(d, "steps", 4)
    act(d, "edit-button", lambda drv: "diffusionlab inpaint" in find(drv, "edit-command").text, "inpaint (rectangle)")
    assert "--mask 5,6,26,21" in find(d, "edit-command").text        # the CLI's rectangle
    choose(d, "mask-mode", "upload")
    mask = tmp_path / "mask.png"
    from PIL import Image, ImageDraw

    im = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(im).rectangle((0, 32, 63, 63), fill=255)
    im.save(mask)
    find(d, "mask-upload").send_keys(str(mask))
    wait(d, lambda drv: "white part" in find(drv, "mask-info").text, what="mask upload shown")
    set_value(d, "seed", 6)
    act(d, "edit-button", lambda drv: "--seed 6" in find(drv, "edit-command").text, "inpaint (uploaded mask)")
    choose(d, "mask-mode", "right")
    assert "right half" in find(d, "mask-info").text
    act(d, "edit-button", lambda drv: "--mask right" in find(drv, "edit-command").text, "inpaint (half)")
    _shot(d, out, "inpaint", "edit")
    set_value(d, "steps", "")

    # ---- inside the model: tokens as the prompt is typed, the blocks and their tooltips
    click(d, "tab-model")
    prompt = find(d, "prompt")
    prompt.clear()
    typed = ""
    for part in ("Seven", " is odd"):
        prompt.send_keys(part)
        typed += part
        want = [chip_text(t) for t in api(url, "api/tokens", {"checkpoint": "text", "prompt": typed})["tokens"]]
        wait(d, lambda drv: texts(drv, "token") == want, what=f"the tokens of {typed!r}")
    assert not find_all(d, "token-dropped")
    long = api(url, "api/tokens", {"checkpoint": "text", "prompt": "y" * 80})
    assert long["truncated"] and long["dropped"]
    set_value(d, "prompt", "y" * 80)                          # past the encoder's token limit
    wait(d, lambda drv: len(texts(drv, "token-dropped")) == len(long["dropped"]), what="truncated tokens")
    assert len(find_all(d, "token")) == len(long["tokens"])
    assert "cut by truncation" in find(d, "tokens-info").text
    wait(d, lambda drv: len(find_all(drv, "arch-block")) > 3, what="architecture")
    assert len(find_all(d, "arch-stage")) >= 4
    arch = api(url, "api/model?checkpoint=text")
    cross = next(b for b in arch["blocks"] if b["cross_attention"])
    block = next(b for b in find_all(d, "arch-block") if b.get_attribute("data-name") == cross["name"])
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", block)
    ActionChains(d).move_to_element(block).perform()
    tip = find(d, "arch-tooltip")
    wait(d, lambda drv: tip.is_displayed(), what="tooltip")
    assert cross["name"] in tip.text and "cross-attention" in tip.text
    assert f"{cross['params']:,} parameters" in tip.text
    ActionChains(d).move_to_element(find_all(d, "arch-stage")[0]).perform()
    wait(d, lambda drv: not tip.is_displayed(), what="tooltip hidden")
    set_value(d, "prompt", "a handwritten seven")
    wait(d, lambda drv: not texts(drv, "token-dropped"), what="tokens back")
    def hover():
        ActionChains(d).move_to_element(block).perform()
        wait(d, lambda drv: tip.is_displayed(), what="tooltip again")

    _shot(d, out, "model", "model", then=hover)


@pytest.mark.e2e
def test_readme_screenshots_on_real_models(browser):
    """The README's pictures: the tour's views on real checkpoints, when ``DL_SCREENSHOT_RUNS``
    names a runs folder with a text model ``demo`` and a class model ``class`` (what `make demo`
    and the README's class command write); skipped otherwise. Shots go to ``$DL_E2E_OUT``."""
    from selenium.webdriver.common.action_chains import ActionChains

    from serve_helpers import server

    runs = os.environ.get("DL_SCREENSHOT_RUNS")
    if not runs:
        pytest.skip("DL_SCREENSHOT_RUNS is not set (a runs folder holding demo/ and class/)")
    out = Path(os.environ.get("DL_E2E_OUT") or REPO / "runs" / "e2e") / "readme"
    out.mkdir(parents=True, exist_ok=True)
    d = browser
    with server(Path(runs)) as (url, _proc):
        open_page(d, url)
        choose(d, "checkpoint-select", "demo")
        set_value(d, "prompt", "a handwritten seven")
        set_value(d, "seed", 3)
        check(d, "same-seed", True)
        set_value(d, "batch", 16)
        generate(d)
        _shot(d, out, "generate", "generate")
        set_value(d, "scrub-slider", 6)
        act(d, "guidance-button", lambda drv: find(drv, "guidance-out").is_displayed(), "guidance view")
        choose(d, "compare-what", "prompt")
        set_value(d, "compare-value", "the number three, written by hand")
        act(d, "compare-button", lambda drv: find(drv, "compare-out").is_displayed(), "comparison")
        _shot(d, out, "guidance", "generate")
        choose(d, "checkpoint-select", "class")
        choose(d, "class", "4")
        set_value(d, "batch", 16)
        generate(d)
        _shot(d, out, "class", "generate")
        click(d, "tab-forward")
        wait(d, lambda drv: "abar" in find(drv, "forward-stats").text, what="forward view")
        click(d, "forward-digit-3")
        set_value(d, "forward-t", 400)
        wait(d, lambda drv: find(drv, "forward-stats").text.startswith("t = 400 "), what="t slid")
        choose(d, "forward-schedule", "cosine")
        wait(d, lambda drv: "(cosine)" in find(drv, "forward-stats").text, what="schedule changed")
        _shot(d, out, "forward", "forward")
        choose(d, "checkpoint-select", "demo")
        click(d, "tab-edit")
        choose(d, "edit-mode", "inpaint")
        choose(d, "edit-digit", "3")
        choose(d, "mask-mode", "rect")
        canvas = find(d, "mask-canvas")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
        ActionChains(d).move_to_element_with_offset(canvas, -100, 0).click_and_hold().move_by_offset(200, 120) \
            .release().perform()
        set_value(d, "prompt", "a handwritten eight")
        set_value(d, "batch", 4)
        act(d, "edit-button", lambda drv: "diffusionlab inpaint" in find(drv, "edit-command").text, "inpaint")
        _shot(d, out, "inpaint", "edit")
        click(d, "tab-model")
        set_value(d, "prompt", "a handwritten seven, drawn in thick ink")
        wait(d, lambda drv: len(find_all(drv, "arch-block")) > 3 and texts(drv, "token"), what="model view")
        block = next(b for b in find_all(d, "arch-block") if b.get_attribute("data-name").startswith("down"))
        _shot(d, out, "model", "model", then=lambda: ActionChains(d).move_to_element(block).perform())
