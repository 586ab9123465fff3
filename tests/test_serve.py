"""`segvol serve`: the API over loopback, its refusals, and (in a real Chromium) the page itself."""

import json
import os
import shutil
import threading
import urllib.error
import urllib.request

import nibabel as nib
import numpy as np
import pytest

from segvol.serve.server import SegVolServer
from segvol.serve.workspace import VIEWS, ViewGeometry, Workspace


def synthetic_ct(path, oblique=False):
    """A 40x48x44 CT (x, y, z) in HU: a body ellipse with a bright 'liver' block."""
    x, y, z = np.meshgrid(np.arange(40), np.arange(48), np.arange(44), indexing="ij")
    hu = np.full((40, 48, 44), -1000, np.int16)
    hu[((x - 20) / 17) ** 2 + ((y - 24) / 20) ** 2 <= 1] = 20
    hu[8:20, 14:30, 10:30] = 150
    affine = np.diag([0.9, 0.8, 2.5, 1.0])
    affine[0, 0] = -0.9  # an LPS-like x axis: the reader must flip it
    nib.save(nib.Nifti1Image(hu, affine), str(path))
    return path


@pytest.fixture
def served(tmp_path):
    from tests.stand_in_models import BoxModel

    root = tmp_path / "scans"
    root.mkdir()
    synthetic_ct(root / "ct.nii.gz")
    (tmp_path / "secret.nii.gz").write_bytes((root / "ct.nii.gz").read_bytes())
    (root / "escape").symlink_to(tmp_path)  # a link that leads out of the served folder
    workspace = Workspace(BoxModel(spatial_size=(8, 32, 32)), root)
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    server = SegVolServer(("127.0.0.1", 0), workspace, max_upload_bytes=2_000_000, upload_dir=str(uploads))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server, root
    server.shutdown()
    server.server_close()


def request(server, path, payload=None, data=None, headers=None, token=True):
    """GET (or POST `payload` as JSON, or `data` as a file) with the launch's token, as the page does."""
    body = data if data is not None else (None if payload is None else json.dumps(payload).encode())
    headers = {"Content-Type": "application/json" if data is None else "application/octet-stream", **(headers or {})}
    if token:
        headers["X-SegVol-Token"] = getattr(server, "token", "")
    req = urllib.request.Request(
        server.url.rstrip("/") + path, data=body, headers=headers, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if response.headers["Content-Type"] == "application/json" else raw)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_views_map_pixels_back_to_the_voxel_they_show():
    geometry = ViewGeometry((5, 7, 9))
    rng = np.random.default_rng(0)
    for _ in range(20):
        voxel = tuple(int(rng.integers(0, n)) for n in (5, 7, 9))
        marker = np.zeros((5, 7, 9), bool)
        marker[voxel] = True
        for view in VIEWS:
            index = voxel[VIEWS.index(view)]
            picture = geometry.slice(marker, view, index)
            assert picture.shape[::-1] == geometry.size(view)
            row, column = np.argwhere(picture)[0]
            assert geometry.voxel(view, index, column + 0.5, row + 0.5) == voxel


def test_refusals_leave_the_server_running(served, tmp_path):
    server, root = served
    assert request(server, "/api/files")[1]["files"] == ["ct.nii.gz"]  # the escaping link is not offered
    for path in ("../secret.nii.gz", "escape/secret.nii.gz", "/etc/passwd"):
        status, payload = request(server, "/api/open", {"path": path})
        assert status == 403 and "outside the served folder" in payload["error"], path
    status, payload = request(server, "/api/upload", data=b"\0" * 3_000_000, headers={"X-Filename": "big.nii.gz"})
    assert status == 413 and "over the limit" in payload["error"]
    status, payload = request(server, "/api/upload", data=b"not a volume at all", headers={"X-Filename": "bad.nii.gz"})
    assert status == 400 and "bad.nii.gz" in payload["error"] and "\n" not in payload["error"]
    status, payload = request(server, "/api/point", {"object": "x", "view": "axial", "index": 0, "x": 1, "y": 1})
    assert status == 400 and payload["error"] == "no image is open"
    status, payload = request(server, "/api/open", {"path": "ct.nii.gz"})
    assert status == 200 and payload["shape"] == [44, 48, 40]


def test_prompts_segment_undo_and_export_like_predict(served, tmp_path):
    from segvol.infer.predict import predict_file

    server, root = served
    request(server, "/api/open", {"path": "ct.nii.gz"})
    request(server, "/api/object", {"name": "liver"})
    # A box dragged on the axial view (h, w) then on the coronal view (d, w).
    status, state = request(
        server, "/api/box", {"object": "liver", "view": "axial", "index": 20, "x0": 10, "y0": 18, "x1": 25, "y1": 33}
    )
    assert status == 200 and state["waiting"] and state["objects"][0]["voxels"] == 0
    status, state = request(
        server, "/api/box", {"object": "liver", "view": "coronal", "index": 24, "x0": 10, "y0": 14, "x1": 25, "y1": 33}
    )
    assert status == 200 and state["objects"][0]["voxels"] > 0
    boxed = state["objects"][0]["voxels"]
    status, state = request(server, "/api/text", {"object": "liver", "text": "liver"})
    assert state["objects"][0]["text"] == "liver"
    status, state = request(server, "/api/undo", {})
    assert state["objects"][0]["text"] is None and state["objects"][0]["voxels"] == boxed
    png = request(server, "/api/slice?view=axial&index=20&window=abdomen&d=20&h=24&w=20")[1]
    assert png[:4] == b"\x89PNG"

    status, exported = request(server, "/api/export", {"name": "from_browser"})
    assert status == 200 and exported["path"] == "from_browser.nii.gz"
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(exported["records"]))
    predict_file(server.workspace.model, root / "ct.nii.gz", tmp_path / "from_cli.nii.gz", exported["records"])
    ours, theirs = nib.load(str(root / "from_browser.nii.gz")), nib.load(str(tmp_path / "from_cli.nii.gz"))
    assert np.array_equal(ours.get_fdata(), theirs.get_fdata()) and np.allclose(ours.affine, theirs.affine)
    assert ours.get_fdata().sum() > 0
    # The exported box is in the file's own voxel indices (x flipped by the LPS-like affine).
    box = exported["records"][0]["box"]
    assert box[0] <= box[3] and box[1] <= box[4] and box[2] <= box[5]
    status, payload = request(server, "/api/export", {"name": "../outside"})
    assert status == 400


def _chromium():
    return shutil.which("chromium") and shutil.which("chromedriver")


HOSTILE_FORM = """<!doctype html><title>a page the user happens to visit</title>
<form method="post" enctype="text/plain" action="{target}{path}">
<input type="hidden" name='{{"name": "{name}", "x": "' value='"}}'><button id="go">go</button></form>"""
HOSTILE_FETCH = """<!doctype html><title>waiting</title><script>
(async () => {{
  const results = [];
  const attempts = [["/api/object", {{name: "pwned-fetch"}}], ["/api/export", {{name: "pwned-fetch"}}]];
  for (const [path, body] of attempts) {{  // "simple" requests: no preflight, cookies included
    try {{
      await fetch("{target}" + path, {{method: "POST", mode: "no-cors", credentials: "include",
                                      headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify(body)}});
      results.push("sent");
    }} catch (error) {{ results.push("failed"); }}
  }}
  try {{ results.push(await (await fetch("{target}/api/files", {{credentials: "include"}})).text()); }}
  catch (error) {{ results.push("blocked"); }}
  try {{
    await fetch("{target}/api/object", {{method: "POST", credentials: "include",
                headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{name: "pwned-cors"}})}});
    results.push("sent");
  }} catch (error) {{ results.push("blocked"); }}
  document.body.dataset.results = JSON.stringify(results);
  document.title = "done";
}})();
</script>"""


def hostile_site(target: str):
    """A second loopback origin (another port) whose pages attack `target`: a script-free form and fetches."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    target = target.rstrip("/")
    pages = {
        "/object": HOSTILE_FORM.format(target=target, path="/api/object", name="pwned"),
        "/export": HOSTILE_FORM.format(target=target, path="/api/export", name="pwned"),
        "/fetch": HOSTILE_FETCH.format(target=target),
    }

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    site = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=site.serve_forever, args=(0.05,), daemon=True).start()
    return site, f"http://127.0.0.1:{site.server_address[1]}"


# CI installs the browser (.ci/run) and sets SEGVOL_REQUIRE_BROWSER: there a missing browser fails.
@pytest.mark.skipif(
    not _chromium() and not os.environ.get("SEGVOL_REQUIRE_BROWSER"),
    reason="needs Debian's chromium and chromium-driver (installed by .ci/run)",
)
def test_the_page_in_a_real_browser(served, tmp_path, caplog):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from segvol.infer.predict import predict_file
    from tests.test_serve_interactive import write_labels

    server, root = served
    write_labels(root / "labels.nii.gz")  # before the page lists the folder's files
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1600,900",
        "--host-resolver-rules=MAP evil.example 127.0.0.1",
    ):  # a DNS-rebinding stand-in
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    waiter = WebDriverWait(driver, 60)

    class wait:  # noqa: N801 - says what the page showed when a wait times out
        @staticmethod
        def until(condition):
            try:
                return waiter.until(condition)
            except Exception:
                status = driver.find_element(By.ID, "status").text
                message = driver.find_element(By.ID, "message").text
                raise AssertionError(f"page status {status!r}, message {message!r}") from None

    try:
        driver.get(server.url_with_token)
        wait.until(lambda d: d.find_element(By.ID, "status").text == "open an image")
        assert driver.find_element(By.ID, "files").get_attribute("value") == "ct.nii.gz"
        driver.find_element(By.ID, "open").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "image open")
        driver.find_element(By.ID, "object-name").send_keys("liver")
        driver.find_element(By.ID, "add-object").click()
        wait.until(lambda d: "liver" in d.find_element(By.ID, "objects").text)

        def drag(view, start, end):
            img = driver.find_element(By.ID, f"view-{view}")
            width, height = img.size["width"], img.size["height"]
            to = lambda f: (int((f[0] - 0.5) * width), int((f[1] - 0.5) * height))  # noqa: E731
            (
                ActionChains(driver)
                .move_to_element_with_offset(img, *to(start))
                .click_and_hold()
                .move_to_element_with_offset(img, *to(end))
                .release()
                .perform()
            )

        driver.find_element(By.CSS_SELECTOR, "input[value=box]").click()
        drag("axial", (0.25, 0.3), (0.65, 0.7))
        wait.until(lambda d: "second view" in d.find_element(By.ID, "status").text)
        drag("coronal", (0.25, 0.25), (0.65, 0.75))
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("done"))
        driver.find_element(By.CSS_SELECTOR, "input[value=point]").click()
        img = driver.find_element(By.ID, "view-axial")
        ActionChains(driver).move_to_element(img).click().perform()
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("done"))
        driver.find_element(By.ID, "text").send_keys("liver")
        driver.find_element(By.ID, "set-text").click()
        wait.until(
            lambda d: (
                "liver" in d.find_element(By.ID, "objects").text
                and d.find_element(By.ID, "status").text.startswith("done")
            )
        )
        state = server.workspace.describe()["objects"][0]
        assert state["text"] == "liver" and state["voxels"] > 0 and len(state["point_labels"]) == 1

        # Every view shows the object's colour once its slices are reloaded.
        import io

        from PIL import Image

        wait.until(
            lambda d: all(d.execute_script(f"return document.getElementById('view-{v}').complete") for v in VIEWS)
        )
        for view in VIEWS:
            shot = np.asarray(
                Image.open(io.BytesIO(driver.find_element(By.ID, f"view-{view}").screenshot_as_png)).convert("RGB")
            ).astype(int)
            reddish = (shot[..., 0] > 150) & (shot[..., 1] < 140) & (shot[..., 2] < 140)
            assert reddish.sum() > 20, f"no overlay colour in the {view} view"
            (tmp_path / f"{view}.png").write_bytes(driver.find_element(By.ID, f"view-{view}").screenshot_as_png)

        driver.find_element(By.ID, "export-name").send_keys("browser_export")
        driver.find_element(By.ID, "export").click()
        wait.until(lambda d: d.find_element(By.ID, "export-result").text.startswith("wrote"))
        records = server.workspace.export_records()

        # A name that is HTML is shown as text: no element made from it, nothing run.
        hostile_name = '<img src=x onerror="document.title=`pwned`">'
        driver.find_element(By.ID, "object-name").clear()
        driver.find_element(By.ID, "object-name").send_keys(hostile_name)
        driver.find_element(By.ID, "add-object").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#objects li")) == 2)
        assert hostile_name in driver.find_element(By.ID, "objects").text
        assert not driver.find_elements(By.CSS_SELECTOR, "#objects img") and driver.title != "pwned"

        # A label map of the served folder: its labels listed, one of them imported as an object.
        from selenium.webdriver.support.ui import Select

        Select(driver.find_element(By.ID, "files")).select_by_visible_text("labels.nii.gz")
        driver.find_element(By.ID, "load-labels").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "2 labels in labels.nii.gz")
        driver.find_element(By.ID, "import-label").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#objects li")) == 3)
        assert server.workspace.objects[2].start_source == "labels.nii.gz:2"

        # Pages of another origin (same host, another port: cookies are sent) change nothing.
        def snapshot():
            return json.dumps(server.workspace.describe()["objects"], sort_keys=True), sorted(os.listdir(root))

        before = snapshot()
        site, hostile = hostile_site(server.url)
        try:
            for page in ("/object", "/export"):
                driver.get(hostile + page)
                driver.find_element(By.ID, "go").click()  # what a click on a decoy button does
                waiter.until(lambda d: d.current_url.startswith(server.url))
                assert "cross-origin request refused" in driver.page_source
            driver.get(hostile + "/fetch")
            waiter.until(lambda d: d.title == "done")
            results = json.loads(driver.find_element(By.TAG_NAME, "body").get_attribute("data-results"))
        finally:
            site.shutdown()
            site.server_close()
        assert results[2] == "blocked" and "ct.nii.gz" not in json.dumps(results), results
        assert snapshot() == before
        refused = [r.message for r in caplog.records if "cross-origin request refused" in r.message]
        assert len(refused) >= 4, refused  # two forms and two fetches reached the server and were refused

        # A foreign Host (DNS rebinding: evil.example resolving to 127.0.0.1) gets no data, even with the token.
        for path in ("/?token=", "/api/files?token=", "/api/state?token="):
            driver.get(f"http://evil.example:{server.server_address[1]}{path}{server.token}")
            assert "Host header does not name this server" in driver.page_source
            assert "ct.nii.gz" not in driver.page_source and "<script" not in driver.page_source
        assert snapshot() == before
    finally:
        driver.quit()
    predict_file(server.workspace.model, root / "ct.nii.gz", tmp_path / "cli.nii.gz", records)
    ours = nib.load(str(root / "browser_export.nii.gz")).get_fdata()
    assert ours.sum() > 0 and np.array_equal(ours, nib.load(str(tmp_path / "cli.nii.gz")).get_fdata())
    ours_json = json.loads((root / "browser_export.json").read_text())
    theirs_json = json.loads((tmp_path / "cli.json").read_text())
    assert ours_json["prompts"] == theirs_json["prompts"] and ours_json["voxels"] == theirs_json["voxels"]
