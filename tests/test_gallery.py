"""The gallery store and index building: exact search, durable writes, reconciliation, resume.

Where a model is needed, the session's tiny *real* gallery checkpoint (``tiny_gallery`` in
conftest.py: MobileNetV3-small trunk, 1 epoch on 256 Fashion-MNIST images) stands in for
ResNet-101: same code path, seconds on CPU.  ``tiny_index`` is its Flat index.
"""

import json
import sqlite3

import numpy as np
import pytest
import torch

from edgequery.checkpoint import load_checkpoint, save_checkpoint
from edgequery.data import DataSpec, load_splits
from edgequery.errors import EdgeQueryError
from edgequery.gallery import FaissGalleryStore, MetadataDB, NewItem
from edgequery.gallery.build import build_index, create_index
from edgequery.gallery.compat import accepted_versions
from edgequery.gallery.faiss_index import snapshot_path
from edgequery.gallery.images import ImageRejected, decode_upload
from edgequery.gallery.metadata import DB_NAME

GREY_32 = DataSpec(resolution=32)  # how uploads to a Fashion-MNIST gallery are pre-processed


def random_unit(n, dim=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vector_index(tmp_path, n=500, factory="Flat", dim=16, name="vec"):
    vecs = random_unit(n, dim)
    items = [NewItem(source=f"vec#{i}", label=i % 3, label_name=f"c{i % 3}") for i in range(n)]
    out = tmp_path / name
    create_index(out, vecs, items, factory, model_version="v-test", progress=False)
    return out, vecs


def exact_top(vecs_by_id: dict, q, k):
    ids = np.array(sorted(vecs_by_id))
    mat = np.stack([vecs_by_id[i] for i in ids])
    return ids[np.argsort(-(mat @ q), kind="stable")[:k]].tolist()


def crash(store):
    """What kill -9 leaves behind: SQLite committed, no snapshot refresh, lock released."""
    if store._snapshot_thread is not None:
        store._snapshot_thread.join()
    store.db.close()
    store._dir_lock.release()


# --------------------------------------------------------------------------- SQLite truth


def test_sqlite_runs_in_wal_with_full_sync(tmp_path):
    db = MetadataDB(tmp_path / DB_NAME, create=True)
    assert db.pragma("journal_mode") == "wal"
    assert db.pragma("synchronous") == 2  # FULL: the WAL is fsync'd at every commit
    ids = db.insert(random_unit(3), [NewItem("a"), NewItem("b"), NewItem("c")])
    assert ids.tolist() == [1, 2, 3]
    assert db.delete(3) and not db.delete(3)
    # AUTOINCREMENT: a deleted id is never handed out again
    assert db.insert(random_unit(1), [NewItem("d")]).tolist() == [4]
    db.close()


def test_refuses_foreign_or_missing_database(tmp_path):
    with pytest.raises(EdgeQueryError, match="no gallery index"):
        FaissGalleryStore(tmp_path / "nothing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / DB_NAME).write_bytes(b"not a database at all" * 100)
    with pytest.raises(EdgeQueryError, match="not a readable gallery database|not an edgequery gallery"):
        FaissGalleryStore(tmp_path / "junk")
    con = sqlite3.connect(tmp_path / "other.sqlite")
    con.execute("CREATE TABLE t (x)")
    con.close()
    with pytest.raises(EdgeQueryError, match="not an edgequery gallery database"):
        MetadataDB(tmp_path / "other.sqlite")


# --------------------------------------------------------------------------- search


# Compositions: exact re-ranking over IVF-PQ, and a rotation (random, or trained OPQ) before
# it.  With every list probed and k_factor 64 (k x 64 >= 500 candidates) the re-ranking sees
# every vector: exact.  "np": no polysemous training, which faiss would otherwise spend seconds
# on for a code order these searches never use; OPQ's own training takes seconds too (slow tier).
FACTORIES = ["Flat", "HNSW32", "IVF8,Flat", "IVF8,PQ4np,RFlat", "RR16,IVF8,PQ4np,RFlat",
             pytest.param("OPQ4,IVF8,PQ4,RFlat", marks=pytest.mark.slow)]


@pytest.mark.parametrize("factory", FACTORIES)
def test_search_matches_exact_neighbours(tmp_path, factory):
    out, vecs = vector_index(tmp_path, factory=factory)
    store = FaissGalleryStore(out, nprobe=8, ef_search=256, k_factor=64, progress=False)
    try:
        queries = random_unit(20, seed=1)
        hits = store.search(queries, 10)
        truth = {i + 1: v for i, v in enumerate(vecs)}
        recall = np.mean([len(set(h.id for h in hs) & set(exact_top(truth, q, 10))) / 10
                          for hs, q in zip(hits, queries)])
        # Flat is exact; IVF with every list probed is exact; HNSW at ef 256 on 500 points is too.
        assert recall == 1.0
        h = hits[0][0]
        assert h.source == f"vec#{h.id - 1}" and h.label_name == f"c{(h.id - 1) % 3}"
        assert abs(h.score - float(vecs[h.id - 1] @ queries[0])) < 1e-5
        assert store.describe()["factory"] == factory
        with pytest.raises(ValueError):
            store.search(np.zeros((1, 16), np.float32), 5)
    finally:
        store.close()


def test_directory_lock_refuses_a_second_owner(tmp_path):
    out, _ = vector_index(tmp_path)
    store = FaissGalleryStore(out, progress=False)
    try:
        with pytest.raises(EdgeQueryError, match="in use by another edgequery process"):
            FaissGalleryStore(out, progress=False)
    finally:
        store.close()
    FaissGalleryStore(out, progress=False).close()  # released on close


# --------------------------------------------------------------------------- durability / reconciliation


@pytest.mark.parametrize("factory", FACTORIES)
def test_writes_after_the_snapshot_are_recovered_from_sqlite(tmp_path, factory):
    out, vecs = vector_index(tmp_path, factory=factory)
    truth = {i + 1: v for i, v in enumerate(vecs)}
    store = FaissGalleryStore(out, nprobe=8, ef_search=256, k_factor=64, snapshot_every=10**9, progress=False)
    new = random_unit(3, seed=7)
    ids = store.add(new, [NewItem(f"new#{i}", 1, "c1") for i in range(3)])
    assert ids == [501, 502, 503]
    truth.update(zip(ids, new))
    for gone in (1, 2, 502):
        assert store.delete(gone)
        del truth[gone]
    assert not store.delete(2)
    crash(store)  # the snapshot on disk still holds the index as built

    store = FaissGalleryStore(out, nprobe=8, ef_search=256, k_factor=64, progress=False)
    try:
        assert len(store) == len(truth) == 500
        for i in (501, 503):
            assert store.search(truth[i][None], 1)[0][0].id == i
        for gone in (1, 2, 502):
            assert store.get(gone) is None
        queries = np.stack([vecs[0], vecs[1], new[1], *random_unit(10, seed=3)])
        for q, hs in zip(queries, store.search(queries, 10)):
            got = [h.id for h in hs]
            assert not {1, 2, 502} & set(got)
            assert got == exact_top(truth, q, 10)
        if factory != "Flat":
            # HNSW cannot delete, IVF cannot renumber: 1 and 2 (in the snapshot) are filtered out
            assert store.describe()["tombstones"] == 2
    finally:
        store.close()


def test_unreadable_snapshot_is_rebuilt_from_sqlite(tmp_path, edgequery_log):
    out, vecs = vector_index(tmp_path, factory="IVF8,Flat")
    snap = snapshot_path(out, "IVF8,Flat")
    snap.write_bytes(snap.read_bytes()[:100])  # truncated, as if copied half-way
    store = FaissGalleryStore(out, nprobe=8, progress=False)
    try:
        assert "unusable" in edgequery_log.text
        assert store.search(vecs[5][None], 1)[0][0].id == 6
    finally:
        store.close()


def test_hnsw_with_many_tombstones_is_compacted(tmp_path):
    out, vecs = vector_index(tmp_path, n=200, factory="HNSW32")
    store = FaissGalleryStore(out, progress=False)
    for i in range(1, 81):
        store.delete(i)
    assert store.describe()["tombstones"] == 80
    store.close()  # snapshot still holds the 80 deleted vectors
    store = FaissGalleryStore(out, progress=False)
    try:
        d = store.describe()
        assert d["tombstones"] == 0 and d["index_vectors"] == d["items"] == 120
    finally:
        store.close()


def test_factory_errors_are_clear(tmp_path):
    vecs = random_unit(100)
    items = [NewItem(f"v{i}") for i in range(100)]
    with pytest.raises(EdgeQueryError, match="cannot build index factory 'Bogus'"):
        create_index(tmp_path / "a", vecs, items, "Bogus", "v")
    with pytest.raises(EdgeQueryError, match="contains IDMap"):
        create_index(tmp_path / "b", vecs, items, "IDMap,Flat", "v")
    with pytest.raises(EdgeQueryError, match=r"needs at least 1024 vectors.*gallery has 100.*IVF2,"):
        create_index(tmp_path / "c", vecs, items, "IVF1024,PQ8", "v")


# --------------------------------------------------------------------------- building from images


def test_index_of_the_fashion_mnist_gallery_split(tiny_index, tiny_gallery):
    from edgequery.evaluate import embed
    from edgequery.models import model_from_checkpoint

    ck = load_checkpoint(tiny_gallery, "gallery")
    split = load_splits(DataSpec.from_dict(ck["data"]), progress=False).gallery
    emb = embed(model_from_checkpoint(ck), split, split_spec(ck)).numpy()
    store = FaissGalleryStore(tiny_index, progress=False)
    try:
        assert len(store) == len(split) == 200
        assert store.model_version == ck["model_version"] and store.dim == 128
        hits = store.search(emb[:20], 3)
        for i, hs in enumerate(hits):
            assert hs[0].id == i + 1 and hs[0].score > 0.999
            assert hs[0].label == int(split.labels[i]) and hs[0].source == f"fashion-mnist/gallery#{i}"
            assert hs[0].label_name == ck["classes"][hs[0].label]
        stored = store.db.embeddings([1, 2, 200], 128)
        assert np.allclose(stored, emb[[0, 1, 199]], atol=1e-6)
        assert store.thumbnail(1)[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        store.close()


def split_spec(ck):
    return DataSpec.from_dict(ck["data"])


def test_interrupted_build_resumes_where_it_stopped(tiny_gallery, tiny_index, tmp_path, monkeypatch):
    import edgequery.evaluate as evaluate

    real_embed, calls = evaluate.embed, []

    def flaky_embed(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed during the third chunk
        return real_embed(*a, **kw)

    monkeypatch.setattr(evaluate, "embed", flaky_embed)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_gallery, "fashion-mnist", "Flat", out, chunk=64, progress=False)
    db = MetadataDB(out / DB_NAME)
    assert db.get("build_done") == 128 and db.count() == 128 and not db.get("complete")
    db.close()
    with pytest.raises(EdgeQueryError, match="unfinished .128 of 200"):
        FaissGalleryStore(out, progress=False)

    s = build_index(tiny_gallery, "fashion-mnist", "Flat", out, chunk=64, progress=False)
    assert s["embedded_now"] == 72 and s["items"] == 200
    a, b = MetadataDB(out / DB_NAME), MetadataDB(tiny_index / DB_NAME)
    try:
        ids_a, emb_a = next(a.iter_embeddings())
        ids_b, emb_b = next(b.iter_embeddings())
        assert ids_a.tolist() == ids_b.tolist() == list(range(1, 201))
        assert np.allclose(emb_a, emb_b, atol=1e-6)  # same result as an uninterrupted build
    finally:
        a.close()
        b.close()


def test_reindex_with_another_factory_reuses_stored_embeddings(tiny_gallery, tiny_index, tmp_path, monkeypatch):
    import shutil

    import edgequery.evaluate as evaluate

    out = tmp_path / "copy"
    shutil.copytree(tiny_index, out)
    monkeypatch.setattr(evaluate, "embed", lambda *a, **k: pytest.fail("re-indexing must not embed again"))
    s = build_index(tiny_gallery, "fashion-mnist", "HNSW32", out, progress=False)
    assert s["embedded_now"] == 0 and s["factory"] == "HNSW32"
    assert snapshot_path(out, "HNSW32").is_file() and not snapshot_path(out, "Flat").exists()
    store = FaissGalleryStore(out, progress=False)
    try:
        assert store.describe()["factory"] == "HNSW32" and len(store) == 200
        assert store.search(store.db.embeddings([7], 128), 1)[0][0].id == 7
    finally:
        store.close()
    # same command again: nothing to do
    assert build_index(tiny_gallery, "fashion-mnist", "HNSW32", out, progress=False)["embedded_now"] == 0


def test_build_refuses_another_gallery_model_without_force(tiny_gallery, tiny_index, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_index, out)
    ck = load_checkpoint(tiny_gallery, "gallery")
    other = dict(ck)
    other["state_dict"] = {**ck["state_dict"], "head.weight": ck["state_dict"]["head.weight"] * 1.5}
    other_path = tmp_path / "other.pt"
    save_checkpoint(other_path, other)
    with pytest.raises(EdgeQueryError, match="holds an index of other model_version"):
        build_index(other_path, "fashion-mnist", "Flat", out, progress=False)
    s = build_index(other_path, "fashion-mnist", "Flat", out, force=True, progress=False)
    assert s["model_version"] == load_checkpoint(other_path)["model_version"] and s["embedded_now"] == 200

    broken = dict(ck)
    broken["state_dict"] = {**ck["state_dict"], "head.bias": ck["state_dict"]["head.bias"] * float("nan")}
    save_checkpoint(tmp_path / "broken.pt", broken)
    with pytest.raises(EdgeQueryError, match="NaN or Inf embeddings"):
        build_index(tmp_path / "broken.pt", "fashion-mnist", "Flat", tmp_path / "nan_index", progress=False)
    db = MetadataDB(tmp_path / "nan_index" / DB_NAME)
    assert db.count() == 0  # nothing non-finite was stored
    db.close()


def test_image_folder_build_records_files_and_classes(tiny_gallery, tmp_path):
    from PIL import Image

    root = tmp_path / "shop"
    rng = np.random.default_rng(0)
    for cls in ("boots", "hats"):
        (root / cls).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / cls / f"{j}.png")
    out = tmp_path / "folder_index"
    build_index(tiny_gallery, str(root), "Flat", out, progress=False)
    store = FaissGalleryStore(out, progress=False)
    try:
        items = store.db.items(range(1, 7))
        assert [items[i].source for i in range(1, 7)] == [f"{c}/{j}.png" for c in ("boots", "hats") for j in range(3)]
        assert [items[i].label_name for i in (1, 4)] == ["boots", "hats"]
        assert store.meta("classes") == ["boots", "hats"]
        assert store.meta("data")["dataset"] == "folder"  # uploads are then pre-processed as RGB
    finally:
        store.close()
    with pytest.raises(EdgeQueryError, match="neither a data set name nor a directory"):
        build_index(tiny_gallery, str(tmp_path / "nope"), "Flat", tmp_path / "x", progress=False)
    assert not (tmp_path / "x" / DB_NAME).exists()  # refused before anything was written: a rerun starts afresh


def test_index_cli_errors_are_one_line(tiny_gallery, tmp_path):
    from edgequery.commands import main

    assert main(["index", "--gallery", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    assert main(["index", "--gallery", str(tiny_gallery), "--index-factory", "Nope",
                 "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o" / DB_NAME).exists()  # refused before any work


# --------------------------------------------------------------------------- compatibility policy


@pytest.mark.slow  # needs a real export (tiny_export)
def test_model_cards_are_checked_against_the_gallery(tiny_gallery, tiny_query, tiny_export, tmp_path):
    """The server accepts a query model_version only on a card (or checkpoint) that proves BCT against it."""
    ck = load_checkpoint(tiny_gallery, "gallery")
    gv, qv = ck["model_version"], load_checkpoint(tiny_query, "query")["model_version"]
    real = json.loads((tiny_export / "model_card.json").read_text())

    acc = accepted_versions(ck, str(tiny_gallery), [str(tiny_export)], [str(tiny_query)])
    assert set(acc) == {gv, qv} and acc[gv].role == "gallery" and acc[qv].role == "query"
    assert set(accepted_versions(ck, str(tiny_gallery), [str(tiny_export / "model_card.json")])) == {gv, qv}

    def card(name, body):
        d = tmp_path / name
        d.mkdir()
        (d / "model_card.json").write_text(body if isinstance(body, str) else json.dumps(body))
        return str(d)

    cases = {
        "other gallery": ({**real, "compatible_with": {**real["compatible_with"], "gallery_version": "ffff"}},
                          "compatible with gallery model_version ffff"),
        "no BCT": ({**real, "compatible_with": None}, "trained without BCT"),
        "wrong dim": ({**real, "embed_dim": 64}, "64 dims"),
        "invented key": ({**real, "gallery_model_version": gv}, "gallery_model_version"),
        "newer format": ({**real, "format_version": 99}, "upgrade edgequery"),
        "not json": ("{nope", "model card"),
        "not object": ("[1, 2]", "model card"),
    }
    for i, (body, message) in enumerate(cases.values()):
        with pytest.raises(EdgeQueryError, match=message):
            accepted_versions(ck, str(tiny_gallery), [card(f"bad{i}", body)])
    with pytest.raises(EdgeQueryError, match="no model card"):
        accepted_versions(ck, str(tiny_gallery), [str(tmp_path / "missing")])


# --------------------------------------------------------------------------- uploads


def test_upload_decoding_limits():
    import io

    from PIL import Image

    def png(im):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    grey = decode_upload(png(Image.new("RGB", (50, 40), (255, 0, 0))), "red.png", GREY_32, 10**6)
    assert grey.shape == (1, 32, 32) and grey.dtype == torch.uint8
    assert int(grey[0, 0, 0]) == Image.new("RGB", (1, 1), (255, 0, 0)).convert("L").getpixel((0, 0))
    colour = decode_upload(png(Image.new("RGB", (50, 40), (255, 0, 0))), "red.png",
                           DataSpec(dataset="folder", resolution=32), 10**6)
    assert colour.shape == (3, 32, 32) and colour[:, 5, 5].tolist() == [255, 0, 0]

    bomb = png(Image.new("L", (4000, 4000)))  # 16 MP of zeros: ~16 kB as PNG
    assert len(bomb) < 100_000
    with pytest.raises(ImageRejected, match="4000x4000") as e:
        decode_upload(bomb, "bomb.png", GREY_32, max_pixels=10**6)
    assert e.value.status == 413
    for data, message in ((b"", "empty"), (b"hello", "not an image"), (png(Image.new("L", (64, 64)))[:60],
                                                                        "truncated or corrupt")):
        with pytest.raises(ImageRejected, match=message) as e:
            decode_upload(data, "x", GREY_32, 10**6)
        assert e.value.status == 422
