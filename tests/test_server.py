"""The gallery HTTP API, tested against real ``edgequery serve`` processes on 127.0.0.1.

Every test that talks to a gallery runs on each backend (``backend``): faiss, embedded
Milvus Lite and a ``milvus-lite server`` on loopback; the tests do not know which one is
behind the API, except where a backend's own mechanics are checked (faiss snapshots).

Every server here but one is a subprocess running uvicorn (``serve`` in conftest.py), spoken
to over loopback with httpx; the read-only test drives the app in process.  The durability
test kills a server with SIGKILL right after writes were acknowledged and checks the writes
are there after a restart.  The models are the session's tiny checkpoints (conftest.py): the
gallery model (MobileNetV3-small, 1 epoch) and a 1-epoch BCT query net, vouched for by its
checkpoint (``--query``) and, in a slow test, by the model card a real ``edgequery export``
wrote (``tiny_export``).
"""

import io
import json
import os
import shutil
import signal
import threading
import time

import httpx
import pytest
import torch

from edgequery.checkpoint import load_checkpoint, save_checkpoint
from edgequery.data import DataSpec
from edgequery.evaluate import embed
from edgequery.gallery.build import build_index
from edgequery.gallery.compat import accepted_versions
from edgequery.gallery.faiss_index import snapshot_path
from edgequery.gallery.guard import TOKEN_ENV
from edgequery.gallery.images import png_thumbnail
from edgequery.models import model_from_checkpoint

GALLERY_BACKENDS = ("faiss", "milvus-lite", "milvus-server")  # as conftest's gallery_copy knows them
SPEC = DataSpec(resolution=32)  # the tiny models' input contract (mean/std are the defaults)
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data(tiny_splits):
    return tiny_splits


@pytest.fixture(scope="module")
def ckpts(tiny_gallery, tiny_query):
    return tiny_gallery, tiny_query


@pytest.fixture(scope="module")
def models(ckpts):
    return tuple(model_from_checkpoint(load_checkpoint(p)) for p in ckpts)


def copy_index(index, tmp_path):
    out = tmp_path / "index"
    shutil.copytree(index, out, ignore=shutil.ignore_patterns("*.log", ".lock"))
    return out


@pytest.fixture(scope="module", params=GALLERY_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def server(backend, gallery_copy, tiny_query, serve, tmp_path_factory):
    """The module's server: the query net vouched for by its checkpoint (--query); --export is tested (slow) below."""
    g = gallery_copy(backend, tmp_path_factory.mktemp("served"))
    s = serve(g.index, *g.flags, "--query", tiny_query, "--max-upload-mb", "1", "--max-pixels", "1000000",
              token=TOKEN, log_dir=tmp_path_factory.mktemp("logs"))
    s.engine = g.engine
    yield s
    s.stop()


def vec(model, images) -> list[list[float]]:
    return embed(model, images, SPEC).tolist()


def png(image: torch.Tensor) -> bytes:
    return png_thumbnail(image)


def search(url, embedding, version, k=5, **kw):
    return httpx.post(url + "/v1/search", json={"embedding": embedding, "model_version": version, "k": k}, **kw)


# --------------------------------------------------------------------------- read-only endpoints


def test_health_model_card_and_docs(server, ckpts):
    g, q = (load_checkpoint(p) for p in ckpts)
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok", "items": 200,
                                                         "model_version": g["model_version"]}
    card = httpx.get(server.url + "/v1/model").json()
    assert card["gallery"]["model_version"] == g["model_version"]
    assert card["gallery"]["input"]["resolution"] == 32 and card["gallery"]["embedding"]["dim"] == 128
    accepted = {a["model_version"]: a["role"] for a in card["accepted_model_versions"]}
    assert accepted == {g["model_version"]: "gallery", q["model_version"]: "query"}
    assert card["index"]["engine"] == server.engine and card["index"]["items"] == 200
    assert card["index"]["factory"] == {"faiss": "Flat", "milvus": "FLAT"}[server.engine]
    assert card["writes_enabled"] is True and card["limits"]["max_pixels"] == 1_000_000
    assert "/v1/search" in httpx.get(server.url + "/openapi.json").json()["paths"]
    assert "swagger" in httpx.get(server.url + "/docs").text.lower()


def test_search_by_gallery_embedding_finds_the_item(server, models, data, ckpts):
    version = load_checkpoint(ckpts[0])["model_version"]
    for i, e in enumerate(vec(models[0], data.gallery.images[:5])):
        r = search(server.url, e, version, k=7)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["results"]) == 7 and body["model_version"] == version
        top = body["results"][0]
        assert top["id"] == i + 1 and top["score"] > 0.999
        assert top["label"] == int(data.gallery.labels[i]) and top["source"] == f"fashion-mnist/gallery#{i}"
        assert [h["score"] for h in body["results"]] == sorted((h["score"] for h in body["results"]), reverse=True)


def test_search_filtered_by_label_returns_that_class_nearest_first(server, models, data, ckpts):
    version = load_checkpoint(ckpts[0])["model_version"]
    gallery = torch.nn.functional.normalize(embed(models[0], data.gallery.images, SPEC), dim=1)
    query = vec(models[0], data.query.images[:1])[0]
    for label in (0, 7):
        r = httpx.post(server.url + "/v1/search", json={"embedding": query, "model_version": version, "k": 5,
                                                        "label": label})
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        members = (data.gallery.labels == label).nonzero().flatten()
        scores = gallery[members] @ torch.nn.functional.normalize(torch.tensor([query]), dim=1)[0]
        exact = (members[scores.argsort(descending=True)[:5]] + 1).tolist()  # ids are positions + 1
        assert [h["id"] for h in hits] == exact and {h["label"] for h in hits} == {label}
    r = httpx.post(server.url + "/v1/search", json={"embedding": query, "model_version": version, "label": 10})
    assert r.status_code == 422 and "label" in r.json()["problem"]


def test_query_model_embeddings_are_accepted(server, models, data, ckpts):
    q = load_checkpoint(ckpts[1])
    r = search(server.url, vec(models[1], data.query.images[:1])[0], q["model_version"], k=10)
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 10


def test_bad_search_requests_say_what_to_do(server, ckpts):
    version = load_checkpoint(ckpts[0])["model_version"]
    good = [0.1] * 128

    def body(**kw):
        return json.dumps({"embedding": good, "model_version": version, "k": 5, **kw})

    cases = [
        (body(embedding=[0.1] * 127), 422, "has 127 values but this gallery's embeddings have 128"),
        (body(embedding=[0.1] * 129), 422, "has 129 values"),
        (body().replace("[0.1, ", "[NaN, ", 1), 422, "NaN or Inf"),
        (body().replace("[0.1, ", "[Infinity, ", 1), 422, "NaN or Inf"),
        (body().replace("0.1]", "-Infinity]", 1), 422, "first at index 127"),
        (body(embedding=[0.0] * 128), 422, "all zeros"),
        (body(k=0), 422, "k=0: Input should be greater than or equal to 1"),
        (body(k=101), 422, "k=101: Input should be less than or equal to 100"),
        (body(k="many"), 422, "k"),
        (body(embedding=["a"] * 128), 422, "embedding"),
        (json.dumps({"embedding": good}), 422, "model_version"),
        ("{not json", 422, "not valid JSON"),
        (body(model_version="0123456789abcdef"), 409, "not compatible with this gallery"),
    ]
    for raw, status, needle in cases:
        r = httpx.post(server.url + "/v1/search", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == status, (raw[:60], r.text)
        err = r.json()
        assert needle in err["problem"], (needle, err)
        assert err["fix"]
    r = httpx.post(server.url + "/v1/search", content=body(embedding=[0.1] * 300_000),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["problem"]


def test_no_bct_query_models_are_refused(ckpts, tmp_path):
    g = load_checkpoint(ckpts[0], "gallery")
    q = load_checkpoint(ckpts[1], "query")
    assert set(accepted_versions(g, str(ckpts[0]), queries=[str(ckpts[1])])) == {g["model_version"],
                                                                                  q["model_version"]}
    save_checkpoint(tmp_path / "nobct.pt", {**q, "compatible_with": None})
    with pytest.raises(Exception, match="trained without BCT"):
        accepted_versions(g, str(ckpts[0]), queries=[str(tmp_path / "nobct.pt")])


# --------------------------------------------------------------------------- image search


def test_image_search_and_upload_limits(server, data):
    for i in (3, 77):
        r = httpx.post(server.url + "/v1/search/image", files={"image": ("g.png", png(data.gallery.images[i]))},
                       data={"k": "3"})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["id"] == i + 1 and len(r.json()["results"]) == 3

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buf, format="PNG")  # 4 MP declared, a few kB on the wire
    cases = [
        ({"image": ("bomb.png", buf.getvalue())}, {}, 413, "2000x2000 = 4000000 pixels"),
        ({"image": ("big.bin", os.urandom(1_200_000))}, {}, 413, "limit of 1048576 bytes"),
        ({"image": ("notes.txt", b"hello, not an image")}, {}, 422, "not an image format"),
        ({"image": ("empty.png", b"")}, {}, 422, "empty"),
        ({"image": ("g.png", png(data.gallery.images[0]))}, {"k": "0"}, 422, "k='0'"),
        ({"file": ("g.png", png(data.gallery.images[0]))}, {}, 422, "image"),
    ]
    for files, form, status, needle in cases:
        r = httpx.post(server.url + "/v1/search/image", files=files, data=form)
        assert r.status_code == status, (needle, r.text)
        assert needle in r.json()["problem"] and r.json()["fix"]


# --------------------------------------------------------------------------- writes


def test_writes_need_the_token(server, data):
    files = {"images": ("x.png", png(data.query.images[0]))}
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN}):
        r = httpx.post(server.url + "/v1/gallery", files=files, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        assert "bearer token" in r.json()["problem"]
        assert httpx.delete(server.url + "/v1/gallery/1", headers=headers).status_code == 401
    # refused before the body is parsed: a stranger's oversized upload gets 401, not 413
    r = httpx.post(server.url + "/v1/gallery", files={"images": ("x.bin", os.urandom(1_500_000))})
    assert r.status_code == 401
    assert httpx.get(server.url + "/v1/gallery/1").status_code == 200  # nothing was deleted


def test_add_search_delete_roundtrip(server, data):
    imgs = [data.query.images[0], data.query.images[1]]
    r = httpx.post(server.url + "/v1/gallery", headers=AUTH,
                   files=[("images", ("a.png", png(imgs[0]))), ("images", ("b.png", png(imgs[1])))],
                   data={"labels": ["Bag", "3"], "sources": ["shop/a", "shop/b"]})
    assert r.status_code == 201, r.text
    added = r.json()["added"]
    assert [a["label_name"] for a in added] == ["Bag", "Dress"] and [a["label"] for a in added] == [8, 3]
    assert [a["source"] for a in added] == ["shop/a", "shop/b"]
    new_id = added[0]["id"]
    assert new_id > 200
    r = httpx.post(server.url + "/v1/search/image", files={"image": ("a.png", png(imgs[0]))}, data={"k": "3"})
    assert r.json()["results"][0]["id"] == new_id
    assert httpx.get(f"{server.url}/v1/gallery/{new_id}").json()["source"] == "shop/a"
    thumb = httpx.get(f"{server.url}/v1/gallery/{new_id}/thumbnail")
    assert thumb.headers["content-type"] == "image/png" and thumb.content.startswith(b"\x89PNG")

    assert httpx.delete(f"{server.url}/v1/gallery/{new_id}", headers=AUTH).json() == {"deleted": new_id}
    assert httpx.get(f"{server.url}/v1/gallery/{new_id}").status_code == 404
    assert httpx.delete(f"{server.url}/v1/gallery/{new_id}", headers=AUTH).status_code == 404
    r = httpx.post(server.url + "/v1/search/image", files={"image": ("a.png", png(imgs[0]))}, data={"k": "50"})
    assert new_id not in [h["id"] for h in r.json()["results"]]
    httpx.delete(f"{server.url}/v1/gallery/{added[1]['id']}", headers=AUTH).raise_for_status()

    for form, needle in (({"labels": "Spaceship"}, "not one of this gallery's classes"),
                         ({"labels": ["Bag", "Bag", "Bag"]}, "3 labels for 1 images")):
        r = httpx.post(server.url + "/v1/gallery", headers=AUTH, files={"images": ("a.png", png(imgs[0]))},
                       data=form)
        assert r.status_code == 422 and needle in r.json()["problem"], r.text
    assert httpx.get(server.url + "/healthz").json()["items"] == 200


def test_concurrent_clients_in_a_bounded_loop(server, models, data, ckpts):
    version = load_checkpoint(ckpts[0])["model_version"]
    embs = vec(models[0], data.gallery.images[:16])
    images = [png(data.gallery.images[i]) for i in range(4)]
    errors, done = [], []

    def reader(t):
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for j in range(20):
                if j % 4 == 3:
                    r = c.post("/v1/search/image", files={"image": ("q.png", images[j % 4])}, data={"k": "5"})
                    expect = j % 4 + 1
                else:
                    i = (t * 7 + j) % 16
                    r = c.post("/v1/search", json={"embedding": embs[i], "model_version": version, "k": 5})
                    expect = i + 1
                if r.status_code != 200 or r.json()["results"][0]["id"] != expect:
                    errors.append((t, j, r.status_code, r.text[:200]))
                done.append(1)

    def writer():
        with httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as c:
            for j in range(8):
                r = c.post("/v1/gallery", files={"images": ("w.png", png(data.query.images[j]))})
                if r.status_code != 201:
                    errors.append(("add", j, r.status_code, r.text[:200]))
                    continue
                r = c.delete(f"/v1/gallery/{r.json()['added'][0]['id']}")
                if r.status_code != 200:
                    errors.append(("delete", j, r.status_code, r.text[:200]))

    threads = [threading.Thread(target=reader, args=(t,)) for t in range(8)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[:5]
    assert len(done) == 160
    assert httpx.get(server.url + "/healthz").json()["items"] == 200


# --------------------------------------------------------------------------- durability


@pytest.mark.parametrize("graph", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["exact", "hnsw"])
def test_acknowledged_writes_survive_kill_9(backend, gallery_copy, ckpts, data, models, serve, tmp_path, graph):
    g = gallery_copy(backend, tmp_path)
    factory = {"faiss": "Flat", "milvus": "FLAT"}[g.engine]
    if graph:  # re-index the stored embeddings (no re-embedding) as a graph: deletes are tombstones on faiss
        factory = {"faiss": "HNSW32", "milvus": "HNSW,M=16"}[g.engine]
        s = build_index(ckpts[0], "fashion-mnist", factory, g.index, progress=False, backend=g.engine,
                        collection=g.collection)
        assert s["embedded_now"] == 0 and s["items"] == 200
    if g.engine == "faiss":
        snap = snapshot_path(g.index, factory)
        snap_mtime = snap.stat().st_mtime_ns
    version = load_checkpoint(ckpts[0])["model_version"]

    s = serve(g.index, *g.flags, "--snapshot-every", "1000000", token=TOKEN, log_dir=tmp_path)
    new_png = png(data.query.images[5])
    r = httpx.post(s.url + "/v1/gallery", headers=AUTH, files={"images": ("new.png", new_png)},
                   data={"labels": "Bag"})
    assert r.status_code == 201, r.text
    new_id = r.json()["added"][0]["id"]
    assert httpx.delete(s.url + "/v1/gallery/10", headers=AUTH).status_code == 200
    s.kill9()  # no shutdown hook, no snapshot: only what was acknowledged as durable remains
    assert s.proc.returncode == -signal.SIGKILL
    if g.engine == "faiss":
        assert snap.stat().st_mtime_ns == snap_mtime  # the faiss snapshot never saw these writes

    s = serve(g.index, *g.flags, token=TOKEN, log_dir=tmp_path)
    try:
        if g.engine == "faiss":
            assert "caught up" in s.output() and "+1 added, -1 deleted" in s.output()
        assert httpx.get(f"{s.url}/v1/gallery/{new_id}").json()["label_name"] == "Bag"
        r = httpx.post(s.url + "/v1/search/image", files={"image": ("new.png", new_png)}, data={"k": "1"})
        assert r.json()["results"][0]["id"] == new_id
        assert httpx.get(s.url + "/v1/gallery/10").status_code == 404
        r = search(s.url, vec(models[0], data.gallery.images[9:10])[0], version, k=20)
        assert 10 not in [h["id"] for h in r.json()["results"]]
        assert httpx.get(s.url + "/healthz").json()["items"] == 200
        r = httpx.post(s.url + "/v1/gallery", headers=AUTH, files={"images": ("n2.png", new_png)})
        assert r.json()["added"][0]["id"] == new_id + 1  # ids are never reused
    finally:
        s.stop()


def test_a_kill_9_during_a_stream_of_adds_loses_no_acknowledged_item(backend, gallery_copy, data, serve, tmp_path):
    """Two clients add images back to back; the server is killed mid-stream; every 201 it sent is still there."""
    g = gallery_copy(backend, tmp_path)
    s = serve(g.index, *g.flags, token=TOKEN, log_dir=tmp_path)
    acked, stop = [], threading.Event()

    def adder(t):
        with httpx.Client(base_url=s.url, timeout=30, headers=AUTH) as c:
            for j in range(1000):
                if stop.is_set():
                    return
                try:
                    r = c.post("/v1/gallery", files={"images": ("a.png", png(data.query.images[(t + j) % 50]))},
                               data={"sources": [f"stream/{t}/{j}"]})
                except httpx.TransportError:
                    return  # the server died under this request: it was never acknowledged
                if r.status_code == 201:
                    acked.append((r.json()["added"][0]["id"], f"stream/{t}/{j}"))

    threads = [threading.Thread(target=adder, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while len(acked) < 6 and time.time() < deadline:
        time.sleep(0.05)
    s.kill9()
    stop.set()
    for t in threads:
        t.join(60)
    assert len(acked) >= 6, s.output()[-2000:]

    s = serve(g.index, *g.flags, log_dir=tmp_path)
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            for item_id, source in acked:
                r = c.get(f"/v1/gallery/{item_id}")
                assert r.status_code == 200 and r.json()["source"] == source, (item_id, r.text)
    finally:
        s.stop()


def test_read_only_server_refuses_writes(backend, gallery_copy, data, tmp_path):
    """In process (the app without uvicorn): the guard and routes of a server started without a token."""
    from fastapi.testclient import TestClient

    from edgequery.gallery.app import create_app
    from edgequery.gallery.service import open_service

    g = gallery_copy(backend, tmp_path)
    service = open_service(g.index, token=None, progress=False, collection=g.collection)
    with TestClient(create_app(service)) as client:  # closes the service on exit (lifespan)
        assert client.get("/v1/model").json()["writes_enabled"] is False
        for headers in ({}, AUTH):
            r = client.delete("/v1/gallery/1", headers=headers)
            assert r.status_code == 403 and "without an API token" in r.json()["problem"]
            r = client.post("/v1/gallery", files={"images": ("x.png", png(data.query.images[0]))}, headers=headers)
            assert r.status_code == 403 and r.json()["fix"]
        assert client.get("/healthz").json()["items"] == 200


@pytest.mark.slow
def test_an_export_card_vouches_for_its_query_model(tiny_index, tiny_export, ckpts, models, data, serve, tmp_path,
                                                    capsys):
    """`edgequery export` -> `edgequery serve --export`: the card's model_version is accepted; a bad card refused."""
    from edgequery.commands import main

    card = json.loads((tiny_export / "model_card.json").read_text())
    index = copy_index(tiny_index, tmp_path)
    s = serve(index, "--export", tiny_export, log_dir=tmp_path)
    try:
        accepted = {a["model_version"]: a for a in httpx.get(s.url + "/v1/model").json()["accepted_model_versions"]}
        assert accepted[card["model_version"]]["role"] == "query"
        assert accepted[card["model_version"]]["source"] == f"{tiny_export.name}/model_card.json"  # no server path
        r = search(s.url, vec(models[1], data.query.images[:1])[0], card["model_version"], k=3)
        assert r.status_code == 200 and len(r.json()["results"]) == 3
    finally:
        s.stop()
    assert "writes disabled" in s.output()

    card["compatible_with"]["gallery_version"] = "ffff"
    bad = tmp_path / "bad_export"
    bad.mkdir()
    (bad / "model_card.json").write_text(json.dumps(card))
    assert main(["serve", "--index", str(index), "--export", str(bad)]) == 2
    assert "compatible with gallery model_version ffff" in capsys.readouterr().err


def test_serve_refuses_bad_setups(tiny_index, gallery_copy, ckpts, tmp_path, monkeypatch, capsys):
    from edgequery.commands import main
    from edgequery.gallery.metadata import DirectoryLock

    index = copy_index(tiny_index, tmp_path)
    busy = copy_index(tiny_index, tmp_path / "busy")
    lock = DirectoryLock(busy)  # as a running server holds it
    milvus = gallery_copy("milvus-lite", tmp_path / "m")
    g = load_checkpoint(ckpts[0], "gallery")
    other = tmp_path / "other_gallery.pt"
    save_checkpoint(other, {**g, "state_dict": {**g["state_dict"], "head.bias": g["state_dict"]["head.bias"] + 1}})
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    cases = [
        (["--index", busy], "in use by another edgequery process"),
        (["--index", tmp_path / "missing.db"], "no Milvus gallery at"),
        (["--index", milvus.index, "--collection", "nope"], "has no gallery collection 'nope'"),
        (["--index", milvus.index, "--gallery", other], "but the index"),
        (["--index", index, "--gallery", other], "but the index"),
        (["--index", index, "--export", tmp_path / "nothing"], "no model card"),
        (["--index", tmp_path / "missing"], "no gallery index"),
        (["--index", index, "--port", "0"], "is not a TCP port"),
        (["--index", index, "--max-pixels", "100000000"], "above the 89478485 pixels Pillow decodes"),
        (["--index", index, "--header-timeout", "0"], "--header-timeout must be positive"),
        (["--index", index, "--max-connections", "0"], "--max-connections must be at least 1"),
    ]
    for flags, needle in cases:
        assert main(["serve", *map(str, flags)]) == 2
        assert needle in capsys.readouterr().err, needle
    monkeypatch.setenv(TOKEN_ENV, "short")
    assert main(["serve", "--index", str(index)]) == 2
    assert "shorter than 16" in capsys.readouterr().err
    lock.release()


def test_serve_flags_default_to_the_servers_limits():
    """The flags' defaults are :class:`Limits`' own, so ``serve --help`` and ``GET /v1/model`` agree."""
    import argparse

    from edgequery.commands import serve as serve_command
    from edgequery.gallery.guard import Limits

    parser = argparse.ArgumentParser()
    serve_command.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--index", "x"])
    assert serve_command.limits_from_args(args) == Limits()
    args = parser.parse_args(["serve", "--index", "x", "--max-upload-mb", "0.5", "--body-timeout", "2.5"])
    limits = serve_command.limits_from_args(args)
    assert limits.max_upload_bytes == 1 << 19 and limits.body_timeout == 2.5
