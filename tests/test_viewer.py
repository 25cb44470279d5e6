"""The local viewer (issue 23, voting_det.viewer and tools/serve.py): its JSON
API in this process (fastapi's TestClient), and the page in a real headless
browser (Debian's chromium and chromedriver, through selenium) against
tools/serve.py started as a process.

References are independent of the viewer: the boxes, scores and thicknesses of
voting_det's plain predictor on the same pixels, the pixels of the files
themselves, distances between caliper points computed here with numpy, pixel
spacings the test writes into its DICOM files.

The model is a tiny untrained Proposed model (MODEL.ROI_HEADS.SCORE_THRESH_TEST
0: always a box). With VOTING_DET_VIEWER_CONFIG and VOTING_DET_VIEWER_WEIGHTS
(and VOTING_DET_VIEWER_IMAGE, VOTING_DET_VIEWER_SPACING in mm per pixel) set,
the browser test uses that model (and image) instead; with
VOTING_DET_VIEWER_SCREENSHOT=path it saves a screenshot of the page there, the
model's result before the drag (docs/images/viewer.png: make viewer-screenshot)."""
import csv
import io
import os
import socket
import subprocess
import sys
import time

import cv2
import httpx
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from voting_det import cli
from voting_det.engine import build_predictor
from voting_det.inference import PREDICTION_FIELDS
from voting_det.interpretation.panel import peak_place
from voting_det.viewer import CSV_FIELDS, ViewerModel, create_app

from tests.test_dicom import PATIENT, region, write_dicom
from tests.test_interpretation import CONFIG_DIR, tiny_cfg

fastapi_testclient = pytest.importorskip("fastapi.testclient")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVE = os.path.join(REPO, "tools", "serve.py")
STATIC = os.path.join(REPO, "voting_det", "viewer", "static")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SPACING = 0.1  # mm per pixel the tests give PNG files
# Tolerances: the table rounds pixels to 2 decimals and mm to 3.
PX_TOL, MM_TOL = 0.0051, 0.00051


def tiny_viewer_cfg(weights="", **overrides):
    return tiny_cfg("nt_fold0_test", **{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0, "MODEL.WEIGHTS": weights,
                                        **overrides})


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A tiny untrained Proposed model: (config.yaml, model.pth)."""
    folder = tmp_path_factory.mktemp("viewer_model")
    cfg = tiny_viewer_cfg()
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(folder)).save("model")
    weights = str(folder / "model.pth")
    config = folder / "config.yaml"
    config.write_text(tiny_viewer_cfg(weights).dump())
    return str(config), weights


@pytest.fixture(scope="module")
def cfg(model_files):
    return cli.load_config(model_files[0])


@pytest.fixture(scope="module")
def client(cfg):
    app = create_app(ViewerModel(cfg))
    with fastapi_testclient.TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="module")
def scan(tiny_nt_set):
    """A synthetic NT scan of the tiny set: (path, grey pixels)."""
    path = str(tiny_nt_set[1] / "Train & Val" / "0.png")
    return path, cv2.imread(path, cv2.IMREAD_GRAYSCALE)


def upload(client, name, data, **form):
    return client.post("/api/images", files={"file": (name, data, "application/octet-stream")},
                       data={k: str(v) for k, v in form.items()})


def png_bytes(grey):
    return cv2.imencode(".png", grey)[1].tobytes()


def table(client):
    text = client.get("/api/table.csv").text
    return list(csv.DictReader(io.StringIO(text))), text


def number(value):
    return None if value in ("", None) else float(value)


# ------------------------------------------------------------------ API: what an upload gives


def test_png_gives_the_predictors_box_score_calipers_and_thickness(client, cfg, scan):
    path, grey = scan
    r = upload(client, "scan 0.png", open(path, "rb").read(), pixel_spacing=SPACING)
    assert r.status_code == 200, r.text
    item = r.json()
    # the reference: voting_det's plain predictor (no trace mode), a second model of its own
    instances = build_predictor(cfg)(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), pixel_spacing=SPACING)["instances"]
    top = int(instances.scores.argmax())
    np.testing.assert_allclose(item["detection"]["box"], instances.pred_boxes.tensor[top].tolist(), atol=0.0051)
    assert item["detection"]["score"] == pytest.approx(float(instances.scores[top]), abs=1e-6)
    m = item["measurement"]
    (ux, uy), (lx, ly) = m["calipers"]
    np.testing.assert_allclose([ux, uy, lx, ly], instances.pred_calipers[top].reshape(4).tolist(), atol=0.0051)
    assert m["thickness_px"] == pytest.approx(float(instances.pred_nt_thickness_px[top]), abs=PX_TOL)
    assert m["thickness_px"] == pytest.approx(np.hypot(lx - ux, ly - uy), abs=3 * PX_TOL)  # between the calipers
    assert m["thickness_mm"] == pytest.approx(m["thickness_px"] * SPACING, abs=MM_TOL + PX_TOL * SPACING)
    assert m["above_cutoff"] == int(m["thickness_mm"] >= 3.5) and m["corrected"] is False
    assert item["pixel_spacing_mm"] == SPACING and item["image_size"] == list(grey.shape)
    # the explanation in words, its points inside the image
    ex = item["explanation"]
    assert ex["line"].startswith(("Primitives", "Highest", "Compared")) and ex["line"].endswith(".")
    assert [lvl["name"] for lvl in ex["levels"]] == list(cfg.MODEL.VOTING.LEVELS)
    assert len(ex["context_boxes"]) == cfg.MODEL.CONTEXT.NUM_BOXES
    for lvl in ex["levels"]:
        assert 1 <= len(lvl["primitives"]) <= 3
        for p in lvl["primitives"]:
            assert 0 <= p["k"] < cfg.MODEL.VOTING.NUM_PRIMITIVES and 0 <= p["share"] <= 1 + 1e-6
            assert p["place"] == peak_place(p["matched"], item["detection"]["box"])
    # the image the page shows: the file's own pixels
    shown = cv2.imdecode(np.frombuffer(client.get(item["image_url"]).content, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(shown, cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))


def test_dicom_spacing_gives_mm_and_no_patient_identifier_leaves(client, scan, tmp_path):
    _, grey = scan
    h, w = grey.shape
    # 0.01 cm = 0.1 mm per pixel in the ultrasound region covering the image
    path = write_dicom(tmp_path / "scan.dcm", grey, regions=[region(0, 0, w - 1, h - 1, 0.01, 0.01)])
    r = upload(client, "scan.dcm", open(path, "rb").read())
    assert r.status_code == 200, r.text
    item = r.json()
    assert item["format"] == "dicom" and item["spacing_source"] == "SequenceOfUltrasoundRegions"
    assert item["pixel_spacing_mm"] == pytest.approx(0.1)
    m = item["measurement"]
    assert m["thickness_mm"] == pytest.approx(m["thickness_px"] * 0.1, abs=MM_TOL + PX_TOL * 0.1)
    # the same pixels as the PNG: the same box
    png = upload(client, "same.png", png_bytes(grey)).json()
    assert item["detection"] == png["detection"] and png["measurement"]["thickness_mm"] is None
    outputs = [r.text, client.get(f"/api/images/{item['id']}").text, client.get("/api/images").text,
               client.get("/api/table.csv").text]
    image = client.get(item["image_url"]).content
    for value in PATIENT.values():
        assert all(value not in text for text in outputs), value
        assert value.encode() not in image
    # a file without regions or PixelSpacing: mm unknown, and why
    bare = write_dicom(tmp_path / "bare.dcm", grey)
    item = upload(client, "bare.dcm", open(bare, "rb").read()).json()
    assert item["measurement"]["thickness_px"] is not None and item["measurement"]["thickness_mm"] is None
    assert item["pixel_spacing_mm"] is None and "unknown" in item["spacing_note"]


def test_a_frame_of_a_cine(client, scan, tmp_path):
    _, grey = scan
    frames = np.stack([grey, 255 - grey, np.roll(grey, 7, axis=1)])
    path = write_dicom(tmp_path / "cine.dcm", frames)
    for frame in (None, 2):
        r = upload(client, "cine.dcm", open(path, "rb").read(), **({} if frame is None else {"frame": frame}))
        item = r.json()
        assert r.status_code == 200 and item["frames"] == 3 and item["frame"] == (frame or 0)
        shown = cv2.imdecode(np.frombuffer(client.get(item["image_url"]).content, np.uint8), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(shown, frames[frame or 0])
        assert item["row"]["frame"] == (frame or 0)
    r = upload(client, "cine.dcm", open(path, "rb").read(), frame=3)
    assert r.status_code == 422 and "cine.dcm" in r.json()["error"] and "frame" in r.json()["error"]


def test_bad_files_are_named_with_what_to_do_and_the_rest_still_works(client, scan, tmp_path):
    _, grey = scan
    good_dicom = open(write_dicom(tmp_path / "ok.dcm", grey), "rb").read()
    bad = {
        "broken.dcm": (good_dicom[:300], ["DICOM", "export it again"]),
        "notes.txt": (b"this is not an image", ["not a readable image", "PNG, JPEG or DICOM"]),
        "empty.png": (b"", ["empty", "drop the image file itself"]),
        "IM000001": (b"DICM" * 40, ["DICOM"]),  # no ending: read as DICOM by its DICM marker
    }
    before = len(client.get("/api/images").json()["images"])
    for name, (data, words) in bad.items():
        r = upload(client, name, data)
        assert r.status_code == 422, (name, r.text)
        message = r.json()["error"]
        assert message.startswith(f"{name}: ") and all(w in message for w in words), message
        assert "/tmp" not in message and "voting_det_viewer_" not in message  # never the temporary file
    r = upload(client, "good.png", png_bytes(grey))
    assert r.status_code == 200 and r.json()["detection"] is not None
    good = r.json()["id"]
    assert len(client.get("/api/images").json()["images"]) == before + len(bad) + 1
    rows = {row["file"]: row for row in table(client)[0]}
    for name in bad:
        assert rows[name]["error"] and rows[name]["score"] == "" and rows[name]["corrected"] == "0"
    assert rows["good.png"]["error"] == "" and float(rows["good.png"]["score"]) > 0
    # the other refusals: bad spacing, unknown image, calipers outside or malformed
    r = upload(client, "x.png", png_bytes(grey), pixel_spacing="-1")
    assert r.status_code == 422 and "pixel spacing" in r.json()["error"]
    r = client.get("/api/images/0000/image.png")
    assert r.status_code == 404 and "drop the file again" in r.json()["error"]
    r = client.put(f"/api/images/{good}/calipers", json={"upper": [5, 5], "lower": [5, 5000]})
    assert r.status_code == 422 and "outside the image" in r.json()["error"]
    r = client.put(f"/api/images/{good}/calipers", json={"upper": "here"})
    assert r.status_code == 422 and "upper" in r.json()["error"]


def test_csv_marks_the_corrected_row_with_both_values(client, scan, tmp_path):
    client.delete("/api/images")
    _, grey = scan
    h, w = grey.shape
    model = upload(client, "a.png", png_bytes(grey), pixel_spacing=SPACING).json()
    other = upload(client, "b.png", png_bytes(grey), pixel_spacing=SPACING).json()
    upper, lower = [60.25, 71.0], [66.75, 40.5]  # given bottom first: stored top first
    r = client.put(f"/api/images/{model['id']}/calipers", json={"upper": upper, "lower": lower})
    assert r.status_code == 200 and r.json()["measurement"]["corrected"] is True
    rows, text = table(client)
    assert text.splitlines()[0].split(",") == list(CSV_FIELDS)
    assert list(CSV_FIELDS[:len(PREDICTION_FIELDS)]) == list(PREDICTION_FIELDS)  # predict.py's columns first
    a, b = rows
    dx, dy = lower[0] - upper[0], lower[1] - upper[1]
    assert a["corrected"] == "1"
    assert float(a["thickness_px"]) == pytest.approx(np.hypot(dx, dy), abs=PX_TOL)
    assert float(a["thickness_mm"]) == pytest.approx(np.hypot(dx * SPACING, dy * SPACING), abs=MM_TOL)
    assert a["above_cutoff"] == "0"
    assert [float(a[k]) for k in ("caliper_upper_x", "caliper_upper_y", "caliper_lower_x", "caliper_lower_y")] \
        == [66.75, 40.5, 60.25, 71.0]
    was = model["measurement"]
    (ux, uy), (lx, ly) = was["calipers"]
    assert [number(a[f"model_{k}"]) for k in ("thickness_px", "thickness_mm", "caliper_upper_x", "caliper_upper_y",
                                               "caliper_lower_x", "caliper_lower_y")] == \
        [was["thickness_px"], was["thickness_mm"], ux, uy, lx, ly]
    assert float(a["score"]) == model["detection"]["score"] and a["pixel_spacing_mm"] == str(SPACING)
    # the uncorrected row: corrected 0, the model's values in both places
    assert b["corrected"] == "0" and b["thickness_px"] == b["model_thickness_px"] != ""
    assert float(b["thickness_px"]) == other["measurement"]["thickness_px"]
    # back to the model's calipers
    client.delete(f"/api/images/{model['id']}/calipers")
    a = table(client)[0][0]
    assert a["corrected"] == "0" and a["thickness_px"] == a["model_thickness_px"]
    # a long correction crosses the cut-off
    client.put(f"/api/images/{model['id']}/calipers", json={"upper": [10, 2], "lower": [10, 2 + 40]})
    a = table(client)[0][0]
    assert float(a["thickness_mm"]) == pytest.approx(4.0, abs=MM_TOL) and a["above_cutoff"] == "1"
    # anisotropic pixels (a DICOM region with 0.02 cm across, 0.01 cm down): mm from both
    path = write_dicom(tmp_path / "aniso.dcm", grey, regions=[region(0, 0, w - 1, h - 1, 0.02, 0.01)])
    item = upload(client, "aniso.dcm", open(path, "rb").read()).json()
    client.put(f"/api/images/{item['id']}/calipers", json={"upper": [20, 30], "lower": [26, 38]})
    row = table(client)[0][-1]
    assert float(row["thickness_px"]) == pytest.approx(10.0, abs=PX_TOL)
    assert float(row["thickness_mm"]) == pytest.approx(np.hypot(6 * 0.2, 8 * 0.1), abs=MM_TOL)
    client.delete("/api/images")
    assert table(client)[0] == []


@pytest.mark.slow
def test_research_panel_is_one_request_away(client, scan):
    _, grey = scan
    item = upload(client, "panel.png", png_bytes(grey)).json()
    r = client.get(item["panel_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    panel = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert panel.shape[1] == 1500 and panel.shape[0] > 1000 and panel.std() > 10  # FIG_WIDTH x DPI, drawn


# ------------------------------------------------------------------ API: safety


def test_only_local_hosts_and_own_origin_and_no_network_at_run_time(client):
    assert client.get("/api/info", headers={"host": "evil.example:8765"}).status_code == 400
    assert client.get("/api/info", headers={"host": "localhost:8765"}).status_code == 200
    r = client.delete("/api/images", headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "refused" in r.json()["error"]
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    # the page's files name nothing outside the viewer (the SVG namespace is a name, not a request)
    for name in os.listdir(STATIC):
        text = open(os.path.join(STATIC, name)).read().replace("http://www.w3.org/2000/svg", "")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
        assert client.get(f"/static/{name}").status_code == 200


@pytest.mark.slow  # builds, saves and loads a second architecture (4 to 10 s here)
def test_a_model_that_does_not_vote_shows_box_and_score_only(tmp_path, scan):
    _, grey = scan
    cfg = cli.load_config(os.path.join(CONFIG_DIR, "nt_faster_rcnn_R18_instant_test.yaml"),
                          ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model")
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(tmp_path / "model.pth")
    cfg.freeze()
    model = ViewerModel(cfg)
    with fastapi_testclient.TestClient(create_app(model), base_url="http://127.0.0.1") as c:
        info = c.get("/api/info").json()["model"]
        assert info["explains"] is False and "does not vote" in info["note"]
        item = upload(c, "scan.png", png_bytes(grey), pixel_spacing=SPACING).json()
        reference = build_predictor(cfg)(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))["instances"]
        top = int(reference.scores.argmax())
        np.testing.assert_allclose(item["detection"]["box"], reference.pred_boxes.tensor[top].tolist(), atol=0.0051)
        assert item["explanation"] is None and item["panel_url"] is None and item["measurement"]["calipers"] is None
        assert c.get(f"/api/images/{item['id']}/panel.png").status_code == 404
        # calipers placed by hand still measure
        r = c.put(f"/api/images/{item['id']}/calipers", json={"upper": [30, 40], "lower": [30, 52]})
        assert r.json()["measurement"]["thickness_mm"] == pytest.approx(12 * SPACING)


# ------------------------------------------------------------------ tools/serve.py


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_listens_on_localhost_unless_told_and_warns(model_files, capsys, monkeypatch):
    import uvicorn

    from tests.test_cli_errors import tool

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    config, weights = model_files
    serve = tool("serve")
    port = _free_port()
    assert serve.main(["--config-file", config, "--port", str(port), "MODEL.WEIGHTS", weights]) == 0
    out = capsys.readouterr()
    assert calls[-1] == {"host": "127.0.0.1", "port": port, "log_level": "warning"}
    assert f"http://127.0.0.1:{port}/" in out.out and "warning" not in out.err
    assert serve.main(["--config-file", config, "--host", "0.0.0.0", "--port", str(port), "MODEL.WEIGHTS",
                       weights]) == 0
    assert calls[-1]["host"] == "0.0.0.0" and "reachable from other computers" in capsys.readouterr().err
    # a port in use: one line naming it, before the model loads
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            cli.run_tool(serve.main, ["--config-file", config, "--port", str(taken), "MODEL.WEIGHTS", weights])
    err = capsys.readouterr().err
    assert exit_.value.code == cli.EXIT_USER_ERROR and f"--port {taken}" in err and err.count("\n") == 1


# ------------------------------------------------------------------ the page in a real browser


def _chrome(download_dir):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def _wait(condition, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def server(model_files, tmp_path):
    """tools/serve.py as a process on a free port of 127.0.0.1: its base URL."""
    config = os.environ.get("VOTING_DET_VIEWER_CONFIG") or model_files[0]
    weights = os.environ.get("VOTING_DET_VIEWER_WEIGHTS") or model_files[1]
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen([sys.executable, SERVE, "--config-file", config, "--port", str(port),
                                "MODEL.WEIGHTS", weights], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up():
        if process.poll() is not None:
            raise AssertionError(f"tools/serve.py exited: {open(tmp_path / 'serve.log').read()}")
        try:
            return httpx.get(f"{url}/api/info", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait(up, 180, "tools/serve.py to answer")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.mark.slow
@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                    reason=f"needs Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}: "
                           "apt-get install chromium chromium-driver)")
def test_browser_upload_see_the_box_drag_a_caliper_download_the_csv(server, scan, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    image = os.environ.get("VOTING_DET_VIEWER_IMAGE") or scan[0]
    spacing = float(os.environ.get("VOTING_DET_VIEWER_SPACING") or SPACING)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = _chrome(downloads)
    screenshot = os.environ.get("VOTING_DET_VIEWER_SCREENSHOT")
    if screenshot:
        driver.set_window_size(1400, 1280)  # the card whole, explanation included
    try:
        # 1. open the page; give the PNG's pixel spacing; upload the image through the file input
        driver.get(server + "/")
        _wait(lambda: driver.execute_script("return document.body.dataset.ready"), 30, "the page")
        driver.find_element(By.ID, "pixel-spacing").send_keys(str(spacing))
        driver.find_element(By.ID, "file-input").send_keys(os.path.abspath(image))
        # 2. the box is drawn where the API says, and visible
        rect = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "article.card[data-id] .view-zoom rect.nt-box"),
                     120, "the NT box on the page")[0]
        card = driver.find_element(By.CSS_SELECTOR, "article.card[data-id]")
        item = httpx.get(f"{server}/api/images/{card.get_attribute('data-id')}").json()
        x0, y0, x1, y1 = item["detection"]["box"]
        drawn = [float(rect.get_attribute(k)) for k in ("x", "y", "width", "height")]
        np.testing.assert_allclose(drawn, [x0, y0, x1 - x0, y1 - y0], atol=1e-3)
        assert rect.size["width"] > 20 and rect.size["height"] > 5 and rect.is_displayed()
        assert card.get_attribute("data-file") == os.path.basename(image)
        assert item["measurement"]["calipers"], "the model gave no calipers to drag"
        if screenshot:  # the model's own result, before the drag
            driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
            driver.save_screenshot(screenshot)
        # 3. drag the lower caliper 30 screen pixels down in the enlarged view
        zoom = driver.find_element(By.CSS_SELECTOR, "article.card[data-id] .view-zoom svg")
        per_screen_px = driver.execute_script(
            "const s = arguments[0]; return s.viewBox.baseVal.width / s.getBoundingClientRect().width;", zoom)
        handles = {w: zoom.find_element(By.CSS_SELECTOR, f"circle.caliper-handle[data-which={w}]")
                   for w in ("upper", "lower")}
        before = {w: [float(h.get_attribute("cx")), float(h.get_attribute("cy"))] for w, h in handles.items()}
        np.testing.assert_allclose(before["upper"] + before["lower"], sum(item["measurement"]["calipers"], []),
                                   atol=1e-3)
        ActionChains(driver).click_and_hold(handles["lower"]).move_by_offset(0, 15).move_by_offset(0, 15) \
            .release().perform()
        def saved():  # the server holds the points the page shows (it answered the page's PUT)
            now = {w: [float(h.get_attribute("cx")), float(h.get_attribute("cy"))] for w, h in handles.items()}
            held = httpx.get(f"{server}/api/images/{item['id']}").json()["measurement"]
            return held["corrected"] and np.allclose(sum(held["calipers"], []), now["upper"] + now["lower"],
                                                     atol=1e-6) and now

        after = _wait(saved, 30, "the correction to be saved")
        assert card.find_elements(By.CSS_SELECTOR, ".badge.corrected")  # the page says so
        np.testing.assert_allclose(after["upper"], before["upper"], atol=0.006)
        np.testing.assert_allclose(after["lower"], [before["lower"][0], before["lower"][1] + 30 * per_screen_px],
                                   atol=0.006 + 0.5 * per_screen_px)
        dragged = float(np.hypot(*np.subtract(after["lower"], after["upper"])))
        # 4. download the CSV and check its row
        driver.find_element(By.ID, "download-csv").click()
        done = _wait(lambda: [p for p in downloads.iterdir() if p.suffix == ".csv"], 30, "the CSV download")
        rows = list(csv.DictReader(open(done[0], newline="")))
    finally:
        driver.quit()
    assert len(rows) == 1 and rows[0]["file"] == os.path.basename(image)
    row = rows[0]
    assert row["corrected"] == "1" and row["error"] == ""
    # the corrected thickness is the dragged distance (the page shows points rounded to 0.01 px)
    assert float(row["thickness_px"]) == pytest.approx(dragged, abs=0.015)
    assert float(row["thickness_mm"]) == pytest.approx(dragged * spacing, abs=0.0015)
    assert float(row["model_thickness_px"]) == pytest.approx(item["measurement"]["thickness_px"], abs=1e-9)
    assert float(row["thickness_px"]) > float(row["model_thickness_px"])  # 30 screen pixels further down
    np.testing.assert_allclose([float(row[k]) for k in ("caliper_lower_x", "caliper_lower_y")], after["lower"],
                               atol=0.006)


def test_the_spacing_order_is_predicts_what_the_user_gave_wins_over_the_file():
    """The page's value, then --pixel-spacing, then the DICOM file's own, then
    the config's (tools/predict.py's order: --pixel-spacing replaces a file's)."""
    from voting_det.viewer.analysis import _spacing

    dicom = {"pixel_spacing_mm": 0.2, "pixel_spacing_xy_mm": [0.3, 0.2], "spacing_source": "SequenceOfUltrasoundRegions"}
    assert _spacing(dicom, 0.05, 0.07, 0.09)[0] == (0.05, 0.05)
    assert _spacing(dicom, None, 0.07, 0.09)[0] == (0.07, 0.07)
    assert _spacing(dicom, None, None, 0.09) == ((0.3, 0.2), "SequenceOfUltrasoundRegions")
    assert _spacing({}, None, None, 0.09)[0] == (0.09, 0.09)
    assert _spacing({}, None, None, None) == (None, None)
