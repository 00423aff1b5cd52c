"""The drawing page: saving drawings as raw data, its JSON API, and a real headless Chromium
drawing a character stroke by stroke with pointer events."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import numpy as np
import pytest

from conftest import MODEL_NAME, ensure_debian_packages, free_port
from kana.classes import get_class
from kana.drawing import BadRequest, InProcessGuesser, RemoteGuesser, make_server, save_drawing
from kana.strokes import load_json_sample, load_pickle_sample, load_raw_dir
from kana.synth import synthesize_sample

KA = {"1": [[-0.6, 0.3], [0.2, 0.35], [0.1, -0.5]], "2": [[0.5, 0.5], [0.6, 0.1]],
      "3": [[-0.2, 0.7], [-0.5, -0.6]]}


# --------------------------------------------------------------------------- saving


def test_save_writes_the_app_pickle_and_a_json_twin_read_back_once(tmp_path):
    path = save_drawing(tmp_path, "alice", "ka", KA)
    assert path == tmp_path / "alice" / "ka00001.pickle"
    from_pickle = load_pickle_sample(path)
    from_json = load_json_sample(path.with_suffix(".json"))
    for k, stroke in enumerate(from_pickle):
        np.testing.assert_array_equal(stroke, np.array(KA[str(k + 1)]))
        np.testing.assert_array_equal(stroke, from_json[k])
    report = load_raw_dir(tmp_path)
    assert [(s.char_id, s.source, s.path) for s in report.samples] == [("ka", "alice", "alice/ka00001.pickle")]
    assert report.rejections == []


def test_save_never_overwrites(tmp_path):
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "ka00002.pickle").write_bytes(b"someone else's file")
    first = save_drawing(tmp_path, "bob", "ka", KA)
    second = save_drawing(tmp_path, "bob", "ka", KA)
    assert [first.name, second.name] == ["ka00003.pickle", "ka00004.pickle"]
    assert (tmp_path / "bob" / "ka00002.pickle").read_bytes() == b"someone else's file"
    # kya's files do not count as ka's
    assert save_drawing(tmp_path, "bob", "kya", {str(i): [[0, 0], [0.1, 0.1]] for i in range(1, 7)}).name == "kya00001.pickle"


def test_concurrent_saves_get_distinct_files(tmp_path):
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(save_drawing(tmp_path, "c", "ka", KA)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 8


@pytest.mark.parametrize(
    "contributor, char_id, strokes, fragment",
    [
        ("../etc", "ka", KA, "contributor"),
        (".hidden", "ka", KA, "contributor"),
        ("", "ka", KA, "contributor"),
        (None, "ka", KA, "contributor"),
        ("alice", "xx", KA, "'xx' is not a class"),
        ("alice", None, KA, "is not a class"),
        ("alice", "ka", {"1": KA["1"]}, "ka is written with 3"),
        ("alice", "ka", {"1": [[float("nan"), 0]], "2": [[0, 0]], "3": [[0, 0]]}, "NaN"),
        ("alice", "ka", {"1": [], "2": [[0, 0]], "3": [[0, 0]]}, "no points"),
        ("alice", "ka", "strokes", "expected a dict of strokes"),
    ],
)
def test_save_refuses_bad_drawings_with_a_reason(tmp_path, contributor, char_id, strokes, fragment):
    with pytest.raises(BadRequest, match="") as exc:
        save_drawing(tmp_path, contributor, char_id, strokes)
    assert fragment in str(exc.value)
    assert not list(tmp_path.rglob("*.pickle"))


# --------------------------------------------------------------------------- the server


def _serve_in_thread(server):
    """Serve `server` from a daemon thread; its base URL."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def page(pipeline, tmp_path_factory):
    """The page server in this process, guessing with the tiny pipeline's champion."""
    raw_dir = tmp_path_factory.mktemp("page-raw")
    guesser = InProcessGuesser(f"models:/{MODEL_NAME}@champion")
    server = make_server(guesser, raw_dir, port=0, contributor="tester")
    yield _serve_in_thread(server), raw_dir
    server.shutdown()
    server.server_close()
    guesser.close()


def _call(url, payload=None, raw=None):
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class _FailingModelServer(BaseHTTPRequestHandler):
    """A model server that answers every request with MLflow's error body and HTTP 500."""

    status, body = 500, json.dumps({"error_code": "INTERNAL_ERROR", "message": "out of memory"}).encode()

    def do_POST(self):
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


class _NotAModelServer(_FailingModelServer):
    """Something else at the model server's address, answering 200 with a page of its own."""

    status, body = 200, b"<html>sign in to the proxy</html>"


def _raw_post(url, path, headers, body=b""):
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    conn.putrequest("POST", path)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders(body)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def test_a_model_server_that_is_down_or_failing_is_a_502_and_the_page_still_saves(tmp_path):
    """Behind `--server-url`: a server that does not answer, answers 500 or answers something
    other than predictions, is the model server's failure (502, naming it), not the drawing's
    (400); saving needs no model."""
    closed_port = free_port()  # nobody listens on it
    failing = ThreadingHTTPServer(("127.0.0.1", 0), _FailingModelServer)
    other = ThreadingHTTPServer(("127.0.0.1", 0), _NotAModelServer)
    failing_url, other_url = _serve_in_thread(failing), _serve_in_thread(other)
    pages = [make_server(RemoteGuesser(model_url, timeout=5), tmp_path, port=0)
             for model_url in (f"http://127.0.0.1:{closed_port}", failing_url, other_url)]
    down_url, failing_page_url, other_page_url = (_serve_in_thread(p) for p in pages)
    try:
        status, body = _call(f"{down_url}/api/predict", {"strokes": KA})
        assert status == 502 and f"127.0.0.1:{closed_port}/invocations did not answer" in body["error"], body
        status, body = _call(f"{failing_page_url}/api/predict", {"strokes": KA})
        assert status == 502 and "failed: out of memory" in body["error"], body
        status, body = _call(f"{other_page_url}/api/predict", {"strokes": KA})
        assert status == 502 and "answered no predictions: b'<html>sign in" in body["error"], body
        status, body = _call(f"{down_url}/api/save", {"strokes": KA, "char_id": "ka", "contributor": "d"})
        assert status == 200 and Path(body["path"]).is_file()
    finally:
        for server in [*pages, failing, other]:
            server.shutdown()
            server.server_close()


def test_malformed_requests_are_400s_that_say_why(tmp_path):
    page = make_server(RemoteGuesser("http://127.0.0.1:9"), tmp_path, port=0)
    url = _serve_in_thread(page)
    try:
        for length in ("-5", "lots"):  # read(-5) would wait for the client to hang up
            status, body = _raw_post(url, "/api/predict", {"Content-Length": length})
            assert status == 400 and f"Content-Length '{length}'" in body["error"], body
        deep = b'{"strokes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        status, body = _raw_post(url, "/api/save", {"Content-Length": str(len(deep))}, deep)
        assert status == 400 and "nested too deeply" in body["error"], body
        huge = b'{"strokes": [[[0.5, ' + b"9" * 5000 + b"]]]}"  # Python reads at most 4,300 digits
        status, body = _raw_post(url, "/api/predict", {"Content-Length": str(len(huge))}, huge)
        assert status == 400 and "request is not JSON" in body["error"], body
        status, body = _raw_post(url, "/api/save", {"Content-Length": str(3 * 1024 * 1024)})
        assert status == 400 and "at most" in body["error"], body
    finally:
        page.shutdown()
        page.server_close()
    assert not list(tmp_path.rglob("*"))


def test_a_port_in_use_is_named_with_what_to_do(tmp_path):
    from kana.drawing import serve_page

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot listen on 127.0.0.1:{port} .*choose another --port"):
            serve_page(server_url="http://127.0.0.1:9", raw_dir=str(tmp_path), port=port)


def test_the_page_stopped_by_sigterm_removes_its_copy_of_the_champion(pipeline, tmp_path):
    """`kana serve-page` keeps the champion's files in a temporary folder while it runs; `kill` (a
    service manager's stop) ends it as Ctrl-C does, so the folder goes with it."""
    import signal
    import sys

    from conftest import server_process

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(scratch), "MLFLOW_TRACKING_URI": pipeline.tracking_uri}
    with server_process(
        [sys.executable, "-m", "kana.cli", "serve-page", "--model-uri", f"models:/{MODEL_NAME}@champion",
         "--raw-dir", str(tmp_path / "raw"), "--port", str(port)],
        f"http://127.0.0.1:{port}/api/classes", tmp_path / "page.log", env=env,
    ) as proc:
        status, body = _call(f"http://127.0.0.1:{port}/api/predict", {"strokes": KA})
        assert status == 200 and len(body["guesses"]) == 5
        (copy,) = scratch.glob("kana-page-model-*")
        assert (copy / "MLmodel").is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not copy.exists(), (tmp_path / "page.log").read_text()[-2000:]


def test_api_guesses_like_the_pyfunc_and_refuses_bad_requests(page, pipeline):
    url, _ = page
    status, body = _call(f"{url}/api/predict", {"strokes": KA})
    assert status == 200 and len(body["guesses"]) == 5
    local = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion").predict([KA])[0]
    assert [g["char_id"] for g in body["guesses"]] == local["top5_char_ids"]
    probs = [g["probability"] for g in body["guesses"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    for payload, raw, fragment in [
        ({"strokes": {"1": []}}, None, "has no points"),
        ({"strokes": None}, None, "expected a dict of strokes"),
        (None, b"{not json", "not JSON"),
        (None, b"[1, 2]", "JSON object"),
        ({"strokes": KA, "char_id": "ka", "contributor": "a/b"}, None, "contributor"),
    ]:
        endpoint = "save" if payload and "char_id" in payload else "predict"
        status, body = _call(f"{url}/api/{endpoint}", payload, raw)
        assert status == 400 and fragment in body["error"], body
    assert _call(f"{url}/api/nothing", {})[0] == 404
    status, body = _call(f"{url}/api/classes")
    assert status == 200 and len(body["classes"]) == 108 and body["contributor"] == "tester"
    with urllib.request.urlopen(f"{url}/") as resp:
        html = resp.read().decode()
    assert "<canvas" in html and "http://" not in html and "https://" not in html  # nothing external


# --------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = ensure_debian_packages("chromium", ["chromium", "chromium-driver", "fonts-ipafont-gothic"])
    driver_path = ensure_debian_packages("chromedriver", ["chromium-driver"])
    if not (chromium and driver_path):
        pytest.skip("Debian chromium/chromium-driver not installed and not installable here")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,900", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    # Chromium's temp folders (its profile, its singleton socket) in ours, not left in /tmp
    scratch = tmp_path_factory.mktemp("chromium-tmp")
    driver = webdriver.Chrome(service=Service(driver_path, env={**os.environ, "TMPDIR": str(scratch)}),
                              options=options)
    yield driver
    driver.quit()


def _confident_sample(model, char_ids, rng):
    """A synthetic sample the champion reads right by a clear margin (the tiny test model is
    weak), so the browser's pixel-rounded copy of it must be read the same."""
    for _ in range(20):
        for cid in char_ids:
            strokes = synthesize_sample(get_class(cid), rng)
            row = model.predict([[s.tolist() for s in strokes]])[0]
            p = row["top5_probabilities"]
            if row["char_id"] == cid and p[0] - p[1] > 0.4:
                return cid, strokes
    pytest.fail("the tiny champion reads no synthetic sample with a clear margin")


def _draw_stroke(driver, canvas, stroke):
    from selenium.webdriver.common.action_chains import ActionChains

    size = canvas.size["width"]
    offsets = [(round(x * size / 2), round(-y * size / 2)) for x, y in stroke]
    chain = ActionChains(driver, duration=0).move_to_element_with_offset(canvas, *offsets[0]).click_and_hold()
    for ox, oy in offsets[1:]:
        chain.move_to_element_with_offset(canvas, ox, oy)
    chain.release().perform()


def _open_page(driver, url):
    """The page loaded and ready: a waiter, its canvas and its stroke count."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, 20)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    return wait, driver.find_element(By.ID, "canvas"), driver.find_element(By.ID, "count")


def test_draw_see_guess_undo_save_in_chromium(page, browser, tmp_path):
    from PIL import Image, ImageDraw
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    url, raw_dir = page
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    cid, strokes = _confident_sample(model, ["ka", "ki", "sa", "no", "ta", "ma", "ho"],
                                     np.random.default_rng(5))
    driver = browser
    wait, canvas, count = _open_page(driver, url)

    def top_guess():
        # read in one script: the page replaces the list when a guess comes back, and an element
        # found in one WebDriver call can be gone by the next (a stale element reference)
        return driver.execute_script(
            "const li = document.querySelector('#guesses li');"
            " return li ? li.getAttribute('data-char-id') : null;")

    for k, stroke in enumerate(strokes):
        _draw_stroke(driver, canvas, stroke)
        wait.until(lambda d: count.text == f"{k + 1} stroke{'s' if k else ''}")
        # guesses after every stroke: five of them
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#guesses li")) == 5)
    wait.until(lambda d: top_guess() == cid)

    drawn = driver.execute_script("return window.kanaSample()")
    assert len(drawn) == len(strokes)
    for k, stroke in enumerate(strokes):
        got = np.array(drawn[str(k + 1)])
        # the same path, to the pixel (consecutive repeats from rounding are dropped)
        assert abs(len(got) - len(stroke)) <= len(stroke) // 4
        assert np.abs(got[0] - stroke[0]).max() < 0.01 and np.abs(got[-1] - stroke[-1]).max() < 0.01

    # undo (from the keyboard) drops the last stroke; drawing it again restores the guess
    undo = driver.find_element(By.ID, "undo")
    assert undo.is_enabled()
    undo.send_keys(Keys.ENTER)
    wait.until(lambda d: count.text.startswith(f"{len(strokes) - 1} stroke"))
    _draw_stroke(driver, canvas, strokes[-1])
    wait.until(lambda d: count.text == f"{len(strokes)} strokes" or len(strokes) == 1)
    wait.until(lambda d: top_guess() == cid)

    shot = tmp_path / "drawing-page.png"
    driver.save_screenshot(str(shot))
    canvas_png = tmp_path / "canvas.png"
    canvas.screenshot(str(canvas_png))
    # The screenshot shows the character upright where it was drawn: its ink matches the
    # recorded strokes drawn independently here (y up on the app's canvas, y down on screen).
    seen = np.asarray(Image.open(canvas_png).convert("L").resize((64, 64), Image.BILINEAR)) < 160
    drawn = driver.execute_script("return window.kanaSample()")
    expected_img = Image.new("L", (64, 64), 0)
    pen = ImageDraw.Draw(expected_img)
    for points in drawn.values():
        xy = [((x + 1) / 2 * 64, (1 - y) / 2 * 64) for x, y in points]
        pen.line(xy + xy[-1:], fill=255, width=3)
    expected = np.asarray(expected_img) > 0
    overlap = (seen & expected).sum() / max(1, (seen | expected).sum())
    assert overlap > 0.5, f"screenshot ink overlaps the recorded strokes by {overlap:.2f}"
    flipped = (seen & expected[::-1]).sum() / max(1, (seen | expected[::-1]).sum())
    assert flipped < overlap / 2

    Select(driver.find_element(By.ID, "char")).select_by_value(cid)
    contributor = driver.find_element(By.ID, "contributor")
    assert contributor.get_attribute("value") == "tester"
    contributor.clear()
    contributor.send_keys("browser")
    driver.find_element(By.ID, "save").click()
    status = driver.find_element(By.ID, "status")
    wait.until(lambda d: status.get_attribute("data-saved"))
    saved = Path(status.get_attribute("data-saved"))
    assert saved == raw_dir / "browser" / f"{cid}00001.pickle"
    loaded = load_pickle_sample(saved)
    assert len(loaded) == len(drawn)
    for k, stroke in enumerate(loaded):
        np.testing.assert_array_equal(stroke, np.array(drawn[str(k + 1)]))
    # a second save of the same drawing is a new file
    driver.find_element(By.ID, "save").click()
    wait.until(lambda d: status.get_attribute("data-saved").endswith("00002.pickle"))
    assert saved.exists() and len(list((raw_dir / "browser").glob("*.pickle"))) == 2

    driver.find_element(By.ID, "clear").click()
    wait.until(lambda d: count.text == "0 strokes")
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#guesses li"))


def _touch(driver, canvas, ticks):
    """Two fingers on the canvas, tick by tick: each tick is (finger, action, (x, y)) with finger
    1 or 2, action "down", "move" or "up", and (x, y) in app coordinates for "down" and "move"."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    half = canvas.size["width"] / 2
    builder = ActionBuilder(driver)
    fingers = {k: builder.add_pointer_input(interaction.POINTER_TOUCH, f"finger{k}") for k in (1, 2)}
    for finger, action, xy in ticks:
        other = fingers[3 - finger]
        me = fingers[finger]
        if action in ("down", "move"):
            me.create_pointer_move(x=round(xy[0] * half), y=round(-xy[1] * half), origin=canvas, duration=0)
            other.create_pause(0)
        if action == "down":
            me.create_pointer_down()
        elif action == "up":
            me.create_pointer_up(0)
        if action != "move":
            other.create_pause(0)
    builder.perform()


def test_a_second_finger_on_the_canvas_neither_breaks_nor_joins_the_stroke_being_drawn(page, browser):
    """On a touch screen a resting palm or a second finger lands mid-stroke: the stroke is the
    first finger's alone, whichever lifts first, and the next stroke starts cleanly."""
    url, _ = page
    driver = browser
    wait, canvas, count = _open_page(driver, url)
    first = [(-0.6, 0.5), (-0.3, 0.5), (0.0, 0.5), (0.3, 0.5)]
    second = [(0.0, 0.2), (0.0, -0.1), (0.0, -0.4)]
    # the second finger lands, moves and lifts while the first draws on
    _touch(driver, canvas, [(1, "down", first[0]), (1, "move", first[1]), (2, "down", (0.6, -0.6)),
                            (2, "move", (0.7, -0.7)), (1, "move", first[2]), (2, "up", None),
                            (1, "move", first[3]), (1, "up", None)])
    wait.until(lambda d: count.text == "1 stroke")
    # the first finger lifts while the second, which landed mid-stroke, moves on
    _touch(driver, canvas, [(1, "down", second[0]), (2, "down", (-0.6, -0.6)), (1, "move", second[1]),
                            (1, "move", second[2]), (1, "up", None), (2, "move", (-0.5, -0.7)),
                            (2, "move", (-0.4, -0.8)), (2, "up", None)])
    wait.until(lambda d: count.text == "2 strokes")
    drawn = driver.execute_script("return window.kanaSample()")
    assert sorted(drawn) == ["1", "2"]
    for key, expected in (("1", first), ("2", second)):
        np.testing.assert_allclose(drawn[key], expected, atol=0.01)


def test_a_character_list_that_does_not_load_turns_saving_off_and_says_why(page, browser):
    """The server gone between loading the page and asking for the character list: the page says
    so and why, Save is off (with nothing to save as), and drawing and guessing still work."""
    from selenium.webdriver.common.by import By

    url, _ = page
    driver = browser
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/api/classes"]})
    try:
        wait, canvas, count = _open_page(driver, url)
    finally:
        driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        driver.execute_cdp_cmd("Network.disable", {})
    status = driver.find_element(By.ID, "status")
    assert status.text.startswith("Could not load the character list: ")
    assert "Reload the page" in status.text and status.get_attribute("class") == "error"
    save = driver.find_element(By.ID, "save")
    assert not save.is_enabled()
    options = driver.find_elements(By.CSS_SELECTOR, "#char option")
    assert [(o.get_attribute("value"), o.text) for o in options] == [("", "(list did not load)")]

    _draw_stroke(driver, canvas, [(-0.5, 0.2), (0.0, 0.25), (0.5, 0.2)])
    wait.until(lambda d: count.text == "1 stroke")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#guesses li")) == 5)
    assert not save.is_enabled()  # a guess clears the message; the list still says why Save is off


def test_the_page_says_why_a_guess_or_a_save_failed_and_keeps_the_drawing(browser, tmp_path):
    """Behind a model server that fails (500), the page shows that server's reason instead of
    guesses; a save the page server refuses (400) says why and writes nothing; the strokes stay,
    and once the drawing is finished it saves."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    failing = ThreadingHTTPServer(("127.0.0.1", 0), _FailingModelServer)
    page_server = make_server(RemoteGuesser(_serve_in_thread(failing), timeout=5), tmp_path, port=0,
                              contributor="erin")
    try:
        driver = browser
        wait, canvas, count = _open_page(driver, _serve_in_thread(page_server))
        status = driver.find_element(By.ID, "status")

        def says(prefix):
            wait.until(lambda d: status.text.startswith(prefix))
            assert status.get_attribute("class") == "error", status.text
            return status.text

        driver.find_element(By.ID, "save").click()
        assert says("Draw something first.") == "Draw something first."
        _draw_stroke(driver, canvas, KA["1"])
        wait.until(lambda d: count.text == "1 stroke")
        assert "failed: out of memory" in says("Could not guess: ")
        assert not driver.find_elements(By.CSS_SELECTOR, "#guesses li")

        Select(driver.find_element(By.ID, "char")).select_by_value("ka")
        driver.find_element(By.ID, "save").click()
        assert "ka is written with 3" in says("Not saved: ")
        assert not status.get_attribute("data-saved") and not list(tmp_path.rglob("*.pickle"))

        for stroke in (KA["2"], KA["3"]):
            _draw_stroke(driver, canvas, stroke)
        wait.until(lambda d: count.text == "3 strokes")
        driver.find_element(By.ID, "save").click()
        wait.until(lambda d: status.get_attribute("data-saved"))
        saved = Path(status.get_attribute("data-saved"))
        assert saved == tmp_path / "erin" / "ka00001.pickle"
        drawn = driver.execute_script("return window.kanaSample()")
        for k, stroke in enumerate(load_pickle_sample(saved)):
            np.testing.assert_array_equal(stroke, np.array(drawn[str(k + 1)]))
    finally:
        for server in (page_server, failing):
            server.shutdown()
            server.server_close()
