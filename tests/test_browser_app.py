"""The page at ``/`` in a real headless Chromium against a real server: on-device and server embedding.

On-device: the server is started with ``--export`` of a real export (TFLite NCHW + NHWC and
ONNX); the page downloads each file and embeds the export's test image in the browser with
LiteRT.js or onnxruntime-web (the copies ``scripts/build_web.sh`` vendors from npm).  The
browser's model input must equal the Python pre-processing's, its embedding the Python
runtime's (cosine >= 0.9999, the card's tolerance), and its top-k ids those the server gives
the Python embedding.  A screenshot of the results is saved under ``test-artifacts/``.

The JS pre-processing is also checked on its own on photos that need resizing (non-square,
RGB, larger and smaller than the model input) against the server's ``decode_upload``: the
same uint8 pixels.  Server mode: the image is uploaded and the gallery model embeds it.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgequery.export.fixtures import read_test_vector
from edgequery.gallery.images import png_thumbnail
from edgequery.gallery.web import VENDOR

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _need_vendor():
    if not (VENDOR / "VERSIONS.json").is_file():
        pytest.fail(f"the browser runtimes are not vendored into {VENDOR}: run scripts/build_web.sh "
                    "(the README's set-up does)")


@pytest.fixture(scope="module")
def web_export(tmp_path_factory, tiny_query, tiny_gallery):
    """An export of ``tiny_query`` with the float files the page runs: TFLite NCHW and NHWC, ONNX."""
    from edgequery.export import ExportOptions, export_query

    out = tmp_path_factory.mktemp("web_export") / "tiny_query"
    export_query(tiny_query, out, tiny_gallery, ExportOptions(formats=("tflite", "onnx"), nhwc=True, threads=(1,),
                                                              warmup=1, runs=3, parity_images=8, verify_images=4,
                                                              progress=False))
    return out


@pytest.fixture(scope="module")
def app_server(tiny_index, web_export, serve, tmp_path_factory):
    d = tmp_path_factory.mktemp("app")
    shutil.copytree(tiny_index, d / "index", ignore=shutil.ignore_patterns("*.log", ".lock"))
    s = serve(d / "index", "--export", web_export, log_dir=d)
    yield s
    s.stop()


def _choose(browser, path, choice, k=5):
    browser.set_files("#file", [path])
    browser.evaluate(f"window.edgequery.results = null; document.getElementById('runtime').value = {json.dumps(choice)};"
                     f"document.getElementById('k').value = '{k}'; document.getElementById('search').click()")
    return browser.wait_for("(window.edgequery.results && window.edgequery.results.map(h => h.id)) || "
                            "(document.getElementById('status').className === 'error' && "
                            "'ERROR ' + document.getElementById('status').textContent)", timeout=120)


def test_the_page_embeds_on_the_device_with_both_browser_runtimes(app_server, web_export, chromium):
    import httpx

    _need_vendor()
    vector = read_test_vector(web_export)
    version = json.loads((web_export / "model_card.json").read_text())["model_version"]
    listing = httpx.get(app_server.url + "/v1/encoders").json()
    files = {f["file"]: f for f in listing["encoders"][0]["files"]}
    assert set(files) == {"query_encoder.tflite", "query_encoder_nhwc.tflite", "query_encoder.onnx"}
    assert {f["runtime"] for f in files.values()} == {"litertjs", "onnxruntime_web"}

    chromium.open(app_server.url + "/")
    assert chromium.wait_for("window.edgequery && window.edgequery.ready")
    assert chromium.evaluate("crossOriginIsolated") is True  # COOP + COEP: threaded wasm builds may run
    image = web_export / "test_image.png"
    expected_input = np.asarray(vector["input"]["values"], dtype=np.float32).reshape(vector["input"]["shape"])
    for name, entry in files.items():
        ids = _choose(chromium, image, f"{version}/{name}")
        assert not isinstance(ids, str), ids
        last = chromium.evaluate("window.edgequery.last")
        x = np.asarray(last["input"], dtype=np.float32)
        x = x.reshape(1, *expected_input.shape[2:], 3).transpose(0, 3, 1, 2) if entry["layout"] == "NHWC" \
            else x.reshape(expected_input.shape)
        if entry["pixel_input"]:  # the app-facing .tflite takes 0-255 pixels and normalises them itself
            assert entry["layout"] == "NHWC" and x.max() > 100
            x = pixel_to_input(x, entry["pixel_input"])
        assert np.abs(x - expected_input).max() <= 1e-6, name  # the card's pre-processing, in the browser
        browser_emb = np.asarray(last["embedding"])
        python_emb = np.asarray(vector["expected_embedding"][name])  # the Python runtime's, same file
        cosine = browser_emb @ python_emb / np.linalg.norm(browser_emb) / np.linalg.norm(python_emb)
        assert cosine >= 0.9999, (name, cosine)
        python_ids = [h["id"] for h in httpx.post(app_server.url + "/v1/search", json={
            "embedding": python_emb.tolist(), "model_version": version, "k": 5}).json()["results"]]
        assert ids == python_ids, name
        timing = chromium.evaluate("document.getElementById('timing').textContent")
        assert timing.startswith("embedded on this device by") and " ms " in timing
        assert chromium.wait_for("[...document.querySelectorAll('.hit img')].every(i => i.complete && "
                                 "i.naturalWidth === 32)")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = chromium.screenshot(ARTIFACTS / "browser-app-results.png")
    assert shot.stat().st_size > 5000


def pixel_to_input(x, pixel_input):
    mean, std = (np.asarray(pixel_input[k], np.float32).reshape(1, 3, 1, 1) for k in ("mean", "std"))
    return (x / 255 - mean) / std


def _photo(tmp_path, name, pixels: np.ndarray) -> Path:
    from PIL import Image

    path = tmp_path / name
    Image.fromarray(pixels).save(path)
    return path


def test_the_pages_resize_gives_the_servers_pixels(app_server, tmp_path, chromium):
    """Non-square, RGB, bigger and smaller than the input: the JS pre-processing equals decode_upload."""
    from PIL import Image

    from edgequery.data import DataSpec
    from edgequery.gallery.images import decode_upload

    _need_vendor()
    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).resize((97, 61),
                                                                                                   Image.BICUBIC))
    photos = {"wide_rgb.png": smooth, "tall_small.png": smooth[:23, :17], "grey_big.png": smooth[..., 0].T.copy(),
              "noise.png": rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)}
    chromium.open(app_server.url + "/")
    assert chromium.wait_for("window.edgequery && window.edgequery.ready")
    spec = DataSpec(resolution=32)
    for name, pixels in photos.items():
        path = _photo(tmp_path, name, pixels)
        chromium.set_files("#file", [path])
        got = chromium.evaluate(
            "(async () => { const m = await import('/static/preprocess.js');"
            " const f = document.getElementById('file').files[0];"
            " const b = await createImageBitmap(f, {premultiplyAlpha: 'none', colorSpaceConversion: 'none'});"
            " const c = new OffscreenCanvas(b.width, b.height), g = c.getContext('2d'); g.drawImage(b, 0, 0);"
            " const d = g.getImageData(0, 0, b.width, b.height).data;"
            " return m.modelPixels(d, b.width, b.height, {resolution: 32, colour: 'grey'}).map(p => Array.from(p)); })()")
        server = decode_upload(path.read_bytes(), name, spec, max_pixels=10**7)  # grey: Fashion-MNIST's
        got = np.asarray(got, dtype=np.uint8).reshape(server.shape)
        assert np.array_equal(got, server.numpy()), (name, np.abs(got.astype(int) - server.numpy()).max())


def test_the_page_refuses_what_it_cannot_embed(app_server, tmp_path, chromium):
    _need_vendor()
    chromium.open(app_server.url + "/")
    assert chromium.wait_for("window.edgequery && window.edgequery.ready")
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    choice = chromium.evaluate("window.edgequery.choices()[0]")
    error = _choose(chromium, bad, choice)
    assert error.startswith("ERROR could not search:"), error


def test_encoder_files_are_served_by_card_name_only(app_server, web_export):
    import httpx

    version = json.loads((web_export / "model_card.json").read_text())["model_version"]
    base = f"{app_server.url}/v1/encoders/{version}"
    r = httpx.get(f"{base}/query_encoder.onnx")
    assert r.status_code == 200 and r.content == (web_export / "query_encoder.onnx").read_bytes()
    assert r.headers["cross-origin-resource-policy"] == "same-origin"
    assert httpx.get(f"{base}/model_card.json").json()["model_version"] == version
    for name in ("test_vector.json", "query.pt", "parity.npz"):  # in the folder, but not files of the card
        r = httpx.get(f"{base}/{name}")
        assert r.status_code == 404 and "is not a file of encoder" in r.json()["problem"], name
    for path in ("..%2Fmodel_card.json", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"):  # no route, no file
        r = httpx.get(f"{base}/{path}")
        assert r.status_code == 404 and set(r.json()) == {"problem", "fix"}, path
    r = httpx.get(f"{app_server.url}/v1/encoders/0000000000000000/model_card.json")
    assert r.status_code == 404 and "--export" in r.json()["fix"]
    page = httpx.get(app_server.url + "/")
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]
    assert page.headers["cross-origin-embedder-policy"] == "require-corp"


@pytest.fixture(scope="module")
def demo_server(tiny_index, tiny_splits, serve, tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    shutil.copytree(tiny_index, d / "index", ignore=shutil.ignore_patterns("*.log", ".lock"))
    (d / "query.png").write_bytes(png_thumbnail(tiny_splits.gallery.images[42]))
    s = serve(d / "index", log_dir=d)
    yield s, d / "query.png", tiny_splits.gallery.labels[42].item(), tiny_splits.classes
    s.stop()


def test_without_an_export_the_page_uploads_to_the_server(demo_server, chromium):
    server, query_png, label, classes = demo_server
    chromium.open(server.url + "/")
    header = chromium.wait_for("document.getElementById('model').textContent.includes('model_version') && "
                               "document.getElementById('model').textContent")
    assert "200 items" in header and "Flat" in header
    assert chromium.wait_for("window.edgequery.ready && document.getElementById('runtime').value") == "server"
    assert "--export" in chromium.evaluate("document.getElementById('runtimes').textContent")
    hits = _choose(chromium, query_png, "server")
    assert hits[0] == 43  # the image itself (id 43) first
    first = chromium.evaluate("document.querySelector('.hit').textContent")
    assert first.startswith(classes[label]) and "#43 ·" in first
    assert chromium.wait_for("[...document.querySelectorAll('.hit img')].every(i => i.complete && "
                             "i.naturalWidth === 32)")
    assert chromium.evaluate("document.getElementById('status').textContent").startswith("5 results in")

    # a refusal is shown with the server's problem and fix
    bad = query_png.with_name("notes.png")
    bad.write_bytes(b"not an image")
    error = _choose(chromium, bad, "server")
    assert error.startswith("ERROR 422:") and "not an image format" in error


def test_waiting_on_a_page_survives_its_navigations(chromium):
    """A page that reloads itself (30 times, 20 ms apart) has no JS context for moments between
    documents; ``open`` and ``wait_for`` must ride through that rather than fail with Chromium's
    "Cannot find default execution context" (seen once in CI on the page at ``/``)."""
    import http.server
    import threading

    page = (b"<!doctype html><script>const n = Number(sessionStorage.n || 0) + 1; sessionStorage.n = n;"
            b"if (n < 30) setTimeout(() => location.reload(), 20); else document.title = 'arrived';</script>")

    class Reloading(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Reloading)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        chromium.open(f"http://127.0.0.1:{server.server_port}/")
        assert chromium.wait_for("document.title === 'arrived' && sessionStorage.n", timeout=60) == "30"
    finally:
        server.shutdown()
    # What Chromium answers when the context asked for is gone is told apart from other errors
    # (wait_for polls on through the one, raises the other).
    from edgequery.gallery.browser import BrowserError, NoPageContext

    with pytest.raises(NoPageContext):
        chromium.send("Runtime.evaluate", {"expression": "1", "contextId": 987654})
    with pytest.raises(BrowserError, match="wasn't found") as bad:
        chromium.send("Runtime.noSuchMethod")
    assert not isinstance(bad.value, NoPageContext)
