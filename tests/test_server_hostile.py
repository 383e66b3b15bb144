"""The gallery server against hostile clients: one regression test per finding of issue 14.

Every server here is a real ``edgequery serve`` subprocess on 127.0.0.1 (``serve`` in
conftest.py) over a copy of the session's tiny Flat index.  The module's server runs with
its address space capped a few GB above its start-up size (``RLIMIT_AS``), so an input
that makes it allocate without bound fails with an error instead of taking the machine
down.  The findings, in the issue's order:

1. thin images (1 x 200 000 px) must be refused before any resizing, cheaply;
2. tiny query vectors (1e-30) must not 500; 3. huge ones (1e19) must not score 0.0;
4. ids >= 2**63 must be 404/422, never 500; 5. slow clients are timed out and cannot
   starve the server of connections; 6. label ``"¹"`` must not 500;
7. every refusal is ``{"problem", "fix"}`` — framework 404/405, validation, oversized form
   fields, deep nesting, 500s — and the OpenAPI lists every status a route answers;
8. no absolute server paths in ``/v1/model``; ``k`` strictly an integer; bounded labels
   and sources; the bearer scheme matched as documented (case-insensitively).
"""

import functools
import io
import json
import resource
import shutil
import socket
import struct
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgequery.gallery.connections import SPARE_DESCRIPTORS, descriptors_needed
from edgequery.gallery.images import decode_upload

TOKEN = "hostile-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEADROOM = 3 << 30  # bytes of address space the module's server may grow by
MAX_CONNECTIONS, HEADER_TIMEOUT, BODY_TIMEOUT = 16, 1.5, 2.0
TIGHT = ("--max-connections", MAX_CONNECTIONS, "--header-timeout", HEADER_TIMEOUT, "--body-timeout", BODY_TIMEOUT)


# --------------------------------------------------------------------------- helpers


def copy_index(index, tmp_path):
    out = tmp_path / "index"
    shutil.copytree(index, out, ignore=shutil.ignore_patterns("*.log", ".lock"))
    return out


def proc_status(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` value in bytes (VmSize, VmHWM, ...)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def png_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def blank_png(size: tuple[int, int]) -> bytes:
    from PIL import Image

    return png_bytes(Image.new("L", size))


def png_header(w: int, h: int) -> bytes:
    """A PNG that declares ``w x h`` grey pixels and holds none (what a bomb's header looks like)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * (w + 1))) + chunk(b"IEND", b""))


def assert_problem(r: httpx.Response, status: int | tuple[int, ...], needle: str = "") -> dict:
    """``r`` is a refusal with this status whose body is exactly ``{"problem": ..., "fix": ...}``."""
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), (r.headers, r.text[:200])
    body = r.json()
    assert set(body) == {"problem", "fix"}, body
    assert isinstance(body["problem"], str) and body["problem"] and isinstance(body["fix"], str) and body["fix"]
    assert needle in body["problem"], (needle, body)
    return body


@pytest.fixture(scope="module")
def server(tiny_index, serve, tmp_path_factory):
    """The module's server (default limits, writes enabled), its address space capped."""
    s = serve(copy_index(tiny_index, tmp_path_factory.mktemp("hostile")), *TIGHT, token=TOKEN,
              log_dir=tmp_path_factory.mktemp("hostile_logs"))
    size = proc_status(s.proc.pid, "VmSize")
    resource.prlimit(s.proc.pid, resource.RLIMIT_AS, (size + HEADROOM, resource.RLIM_INFINITY))
    s.model_version = httpx.get(s.url + "/v1/model").json()["gallery"]["model_version"]
    s.dim = httpx.get(s.url + "/v1/model").json()["gallery"]["embedding"]["dim"]
    yield s
    s.stop()


def search(server, embedding, k=5, **kw):
    return httpx.post(server.url + "/v1/search", json={"embedding": embedding, "model_version": server.model_version,
                                                       "k": k, **kw}, timeout=30)


def results(r: httpx.Response) -> list[tuple[int, float]]:
    assert r.status_code == 200, r.text[:300]
    return [(h["id"], h["score"]) for h in r.json()["results"]]


# --------------------------------------------------------------------------- 1. thin images


@pytest.mark.parametrize("route", ["/v1/search/image", "/v1/gallery"])
def test_1_thin_images_are_refused_before_any_resizing(server, route):
    field = "image" if route == "/v1/search/image" else "images"
    peak = proc_status(server.proc.pid, "VmHWM")
    for size in ((1, 200_000), (200_000, 1), (1, 25_000_000)):
        data = blank_png(size)
        assert len(data) < 100_000
        t = time.perf_counter()
        r = httpx.post(server.url + route, files={field: ("thin.png", data)}, headers=AUTH, timeout=60)
        took = time.perf_counter() - t
        assert_problem(r, (413, 422), f"{size[0]}x{size[1]}")
        assert took < 2.0, f"{size}: {took:.1f} s"
    grew = proc_status(server.proc.pid, "VmHWM") - peak
    assert grew < 200 << 20, f"peak memory grew by {grew >> 20} MB"
    assert server.proc.poll() is None


def test_1_bounded_resizing_matches_the_data_pipeline():
    """The upload path resizes only the centre square, yet gives ``square_resize``'s pixels (+-1 rounding)."""
    from PIL import Image

    from edgequery.data import DataSpec, square_resize

    rng = np.random.default_rng(0)
    colour, grey = DataSpec(dataset="folder", resolution=32), DataSpec(dataset="fashion-mnist", resolution=32)
    for w, h in ((37, 50), (64, 48), (33, 32), (32, 200), (300, 31), (97, 97), (640, 480)):
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        for spec, want in ((colour, square_resize(im, 32)),
                           (grey, square_resize(im.convert("L").convert("RGB"), 32)[:1])):
            got = decode_upload(png_bytes(im), "x.png", spec, 10**6)
            assert got.shape == want.shape
            assert int((got.int() - want.int()).abs().max()) <= 1, (w, h, spec.dataset)


# --------------------------------------------------------------------------- 2, 3. vector scale


def test_2_3_query_vectors_of_any_finite_scale_search_like_unit_ones(server):
    base = results(search(server, [1.0] * server.dim))
    for scale in (1e-30, 1e-23, 1e-40, 5e-324, 1e19, 1e30, 1e300):
        got = results(search(server, [scale] * server.dim))
        assert [i for i, _ in got] == [i for i, _ in base], scale
        assert np.allclose([s for _, s in got], [s for _, s in base], atol=1e-5), (scale, got[:2], base[:2])
    one_hot = [0.0] * server.dim
    one_hot[3] = 1e-310  # a float64 subnormal: a direction all the same
    assert len(results(search(server, one_hot))) == 5
    for raw in ("[1e400]", "[-1e999]"):  # JSON numbers beyond float64: refused, not answered with zeros
        body = json.dumps({"embedding": [0.5] * server.dim, "model_version": server.model_version, "k": 5})
        body = body.replace("[0.5", raw[:-1], 1)
        r = httpx.post(server.url + "/v1/search", content=body, headers={"content-type": "application/json"})
        assert_problem(r, 422)
    assert_problem(search(server, [0.0] * server.dim), 422, "all zeros")


# --------------------------------------------------------------------------- 4. id range


def test_4_ids_outside_sqlite_range_are_404_or_422(server):
    with httpx.Client(base_url=server.url, headers=AUTH) as c:
        for item_id in (2**63, 2**63 + 1, 2**64, 10**30, -(2**63) - 1):
            for method, path in (("GET", f"/v1/gallery/{item_id}"), ("GET", f"/v1/gallery/{item_id}/thumbnail"),
                                 ("DELETE", f"/v1/gallery/{item_id}")):
                assert_problem(c.request(method, path), (404, 422))
        for item_id in (2**63 - 1, 999_999):
            assert_problem(c.get(f"/v1/gallery/{item_id}"), 404, "no gallery item")
            assert_problem(c.delete(f"/v1/gallery/{item_id}"), 404)
        assert c.get("/healthz").json()["items"] == 200


# --------------------------------------------------------------------------- 5. slow clients


def read_all(sock: socket.socket, deadline: float) -> bytes:
    out = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            break
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data
    raise AssertionError(f"connection still open after the deadline (got {out[:80]!r})")


def test_5_slow_clients_are_timed_out_and_cannot_starve_the_server(server):
    """64 clients that never finish their headers, one that never finishes its body, and fewer
    descriptors than clients: an honest client still gets through, the slow ones are let go."""
    pid = server.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    used = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    spare = descriptors_needed(MAX_CONNECTIONS) - SPARE_DESCRIPTORS + 4  # what 16 connections need, not 64 clients
    assert spare < 64
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (used + spare, hard))
    slow = []
    try:
        t0 = time.monotonic()
        for _ in range(64):  # 4x the connection limit, more than the descriptors left
            c = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the headers never end
            slow.append(c)
        body = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        body.sendall(b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"embedding\": [")  # the body never ends
        slow.append(body)
        for _ in range(3):  # an honest client still gets through, promptly
            assert httpx.get(server.url + "/healthz", timeout=3).status_code == 200
        deadline = time.monotonic() + HEADER_TIMEOUT + 3
        for c in slow[:-1]:  # every slow client is let go: closed, or told why
            answer = read_all(c, deadline)
            assert answer == b"" or answer.startswith((b"HTTP/1.1 408", b"HTTP/1.1 503")), answer[:100]
            if answer:
                assert set(json.loads(answer.split(b"\r\n\r\n", 1)[1])) == {"problem", "fix"}
        answer = read_all(body, time.monotonic() + BODY_TIMEOUT + 3)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert "body did not arrive" in json.loads(answer.split(b"\r\n\r\n", 1)[1])["problem"]
        assert time.monotonic() - t0 < 12
        assert httpx.get(server.url + "/healthz", timeout=3).status_code == 200
    finally:
        for c in slow:
            c.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert "Traceback" not in server.output()


# --------------------------------------------------------------------------- 6. labels


def test_6_labels_that_look_like_digits_are_refused_cleanly(server, tiny_splits):
    from edgequery.gallery.images import png_thumbnail

    image = png_thumbnail(tiny_splits.query.images[0])
    for label in ("¹", "٣", "²³", "1" * 40, "x" * 5000):
        r = httpx.post(server.url + "/v1/gallery", headers=AUTH, files={"images": ("a.png", image)},
                       data={"labels": label})
        assert_problem(r, 422, "label")
    assert httpx.get(server.url + "/healthz").json()["items"] == 200


# --------------------------------------------------------------------------- 7. one error model


def test_7_every_refusal_is_problem_and_fix(server):
    url = server.url
    assert_problem(httpx.get(url + "/no/such/page"), 404)
    r = httpx.put(url + "/v1/search", json={})
    assert_problem(r, 405)
    assert "POST" in r.headers["allow"]
    assert_problem(httpx.delete(url + "/v1/gallery/1/thumbnail"), 405)
    assert_problem(httpx.delete(url + "/v1/gallery/1/thumbnail", headers=AUTH), 405)
    deep = '{"embedding": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = httpx.post(url + "/v1/search", content=deep, headers={"content-type": "application/json"})
    assert_problem(r, (400, 413, 422))
    r = httpx.post(url + "/v1/search/image", files={"image": ("x.png", b"\x89PNG")},
                   data={"k": "5" * 1_500_000})  # a form field above the parser's part limit
    assert_problem(r, (400, 413, 422))
    r = httpx.post(url + "/v1/search", content=b"\xff\xfe not json", headers={"content-type": "application/json"})
    assert_problem(r, (400, 422))
    r = httpx.post(url + "/v1/search", content=b"[1, 2]", headers={"content-type": "text/plain"})
    assert_problem(r, (400, 415, 422))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:  # headers that never stop
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for i in range(5):  # the 5th passes h11's 16 KB buffer for an incomplete request
            c.sendall(f"X-Padding-{i}: {'x' * 4000}\r\n".encode())
            time.sleep(0.02)
        answer = read_all(c, time.monotonic() + 5)
    assert answer.startswith(b"HTTP/1.1 400") and b"malformed HTTP request" in answer, answer[:200]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:  # not HTTP at all
        c.sendall(b"\x16\x03\x01\x02\x00 hello TLS\r\n\r\n")
        answer = read_all(c, time.monotonic() + 5)
    assert answer.startswith(b"HTTP/1.1 400") and b'"fix"' in answer, answer[:200]


def test_7_a_decompression_bomb_is_refused_with_the_servers_limit(server):
    for w, h in ((10_000, 10_000), (20_000, 20_000), (6_000, 6_000)):
        r = httpx.post(server.url + "/v1/search/image", files={"image": ("bomb.png", png_header(w, h))})
        body = assert_problem(r, 413, f"{w * h} pixels")
        assert "limit of 25000000" in body["problem"] and "178956970" not in body["problem"], body


def test_7_an_unexpected_error_is_a_json_500_that_closes_the_connection(tiny_index, tmp_path, edgequery_log):
    from fastapi.testclient import TestClient

    from edgequery.gallery.app import create_app
    from edgequery.gallery.service import open_service

    service = open_service(copy_index(tiny_index, tmp_path), token=None, progress=False)

    def broken(*_a, **_kw):
        raise RuntimeError("boom at /secret/server/path")

    service.store.search = broken
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        version = client.get("/v1/model").json()["gallery"]["model_version"]
        r = client.post("/v1/search", json={"embedding": [1.0] * service.store.dim, "model_version": version})
        body = assert_problem(r, 500)
        assert r.headers["connection"] == "close"
        assert "/secret" not in r.text and "boom" not in body["problem"]
        assert client.get("/healthz").status_code == 200
    assert any(rec.exc_info and "boom" in str(rec.exc_info[1]) for rec in edgequery_log.records)


def test_7_the_openapi_documents_every_status_and_its_body(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"problem", "fix"}
    expected = {
        ("get", "/healthz"): {"200", "500"},
        ("get", "/v1/model"): {"200", "500"},
        ("post", "/v1/search"): {"200", "400", "409", "413", "422", "500"},
        ("post", "/v1/search/image"): {"200", "400", "413", "422", "500"},
        ("post", "/v1/gallery"): {"201", "400", "401", "403", "413", "422", "500"},
        ("delete", "/v1/gallery/{item_id}"): {"200", "401", "403", "404", "422", "500"},
        ("get", "/v1/gallery/{item_id}"): {"200", "404", "422", "500"},
        ("get", "/v1/gallery/{item_id}/thumbnail"): {"200", "404", "422", "500"},
    }
    for (method, path), codes in expected.items():
        responses = spec["paths"][path][method]["responses"]
        assert codes <= set(responses), (method, path, sorted(responses))
        for code, resp in responses.items():
            if code.startswith(("4", "5")):
                schema = resp["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}, (method, path, code, schema)
    assert "401" in spec["paths"]["/v1/gallery"]["post"]["responses"]
    assert "WWW-Authenticate" in spec["paths"]["/v1/gallery"]["post"]["responses"]["401"]["headers"]


# --------------------------------------------------------------------------- 8. leaks and looseness


def test_8_the_model_card_shows_no_server_paths(server, tiny_index):
    card = httpx.get(server.url + "/v1/model").json()

    def strings(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
        elif isinstance(x, str):
            yield x

    leaked = [s for s in strings(card) if s.startswith("/") or "/tmp" in s or str(tiny_index.parent) in s]
    assert not leaked, leaked
    assert card["gallery"]["checkpoint"] == "gallery.pt"


def test_8_k_is_strictly_an_integer(server):
    for k in ("5", True, False, 5.5, "5.0", [5], None, 1e300):
        assert_problem(search(server, [1.0] * server.dim, k=k), 422, "k")
    assert len(results(search(server, [1.0] * server.dim, k=4.0))) == 4  # a JSON Schema integer
    assert_problem(search(server, ["0.5"] * server.dim), 422, "embedding")
    assert_problem(search(server, [1.0] * server.dim, extra="field"), 422, "extra")
    assert len(results(search(server, [1.0] * server.dim, k=3))) == 3


def test_8_sources_and_labels_are_bounded(server, tiny_splits):
    from edgequery.gallery.images import png_thumbnail

    image = png_thumbnail(tiny_splits.query.images[0])
    r = httpx.post(server.url + "/v1/gallery", headers=AUTH, files={"images": ("a.png", image)},
                   data={"sources": "s" * 900_000}, timeout=30)
    assert_problem(r, (413, 422), "source")
    r = httpx.post(server.url + "/v1/gallery", headers=AUTH, files={"images": ("a.png", image)},
                   data={"sources": "s" * 5000})
    assert_problem(r, 422, "source")
    r = httpx.post(server.url + "/v1/gallery", headers=AUTH, files={"images": ("n" * 3000 + ".png", image)})
    assert r.status_code == 201, r.text[:200]
    added = r.json()["added"][0]
    assert len(added["source"]) <= 1024
    assert httpx.delete(f"{server.url}/v1/gallery/{added['id']}", headers=AUTH).status_code == 200
    limits = httpx.get(server.url + "/v1/model").json()["limits"]
    assert limits["max_source_chars"] == 1024 and limits["max_label_chars"] >= 64


def test_8_the_bearer_scheme_is_case_insensitive_and_the_token_exact(server):
    """As documented (RFC 7235: the scheme is case-insensitive), for both the guard and the route."""
    spec = httpx.get(server.url + "/openapi.json").json()
    scheme = next(iter(spec["components"]["securitySchemes"].values()))
    assert scheme["scheme"].lower() == "bearer" and "case-insensitive" in scheme["description"]
    accepted = [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer   {TOKEN}"]
    refused = [f"Bearer {TOKEN.upper()}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, f"Bearer{TOKEN}",
               "Bearer", "", f"Token {TOKEN}"]
    for header in accepted:
        assert_problem(httpx.delete(server.url + "/v1/gallery/999999", headers={"Authorization": header}), 404)
    for header in refused:
        r = httpx.delete(server.url + "/v1/gallery/999999", headers={"Authorization": header})
        assert_problem(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"


def test_5_the_descriptor_limit_is_checked_at_start_up(monkeypatch):
    from edgequery.errors import EdgeQueryError
    from edgequery.gallery import connections

    calls = []
    monkeypatch.setattr(connections.resource, "getrlimit", lambda _what: (256, 4096))
    monkeypatch.setattr(connections.resource, "setrlimit", lambda what, limits: calls.append(limits))
    connections.ensure_descriptors(100)  # raises the soft limit within the hard one
    assert calls == [(connections.descriptors_needed(100), 4096)]
    monkeypatch.setattr(connections.resource, "getrlimit", lambda _what: (256, 256))
    with pytest.raises(EdgeQueryError, match="--max-connections 1000 needs about") as e:
        connections.ensure_descriptors(1000)
    assert "--max-connections 96 or less" in e.value.fix
