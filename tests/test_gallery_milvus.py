"""The Milvus backend below the HTTP layer: building (resume, re-index, refusals) and filtered search.

Embedded Milvus Lite (a ``.db`` folder) is the real engine here; the HTTP tests in
``test_server.py`` run the same API on faiss, embedded Milvus and a loopback Milvus server.
"""

import numpy as np
import pytest

from edgequery.checkpoint import load_checkpoint, save_checkpoint
from edgequery.errors import EdgeQueryError
from edgequery.gallery.build import build_index
from edgequery.gallery.metadata import DB_NAME, MetadataDB
from edgequery.gallery.milvus_store import (MilvusCollection, MilvusGalleryStore, backend_of, is_milvus_uri,
                                            parse_index_spec)
from edgequery.gallery.service import open_store


def test_index_specs_and_uris_are_checked_before_any_work(tiny_gallery, tmp_path, capsys):
    from edgequery.commands import main

    assert parse_index_spec("hnsw,M=32") == ("HNSW", {"M": 32, "efConstruction": 200})
    assert parse_index_spec("IVF_SQ8") == ("IVF_SQ8", {"nlist": 1024})
    for spec, needle in (("IVF_PQ", "unknown index type 'IVF_PQ'"), ("HNSW,M=0", "'M=0' is not a parameter"),
                         ("FLAT,nlist=4", "FLAT takes no parameters"), ("HNSW,ef=4", "HNSW takes M=")):
        with pytest.raises(EdgeQueryError, match=needle):
            parse_index_spec(spec)
    assert is_milvus_uri("g.db") and is_milvus_uri("http://10.0.0.1:19530") and not is_milvus_uri("gallery_index")
    faiss_dir = tmp_path / "old.db"  # a faiss index directory that happens to be called *.db stays faiss
    faiss_dir.mkdir()
    (faiss_dir / DB_NAME).touch()
    assert backend_of(faiss_dir) == "faiss" and backend_of(tmp_path / "new.db") == "milvus"
    assert backend_of(tmp_path / "new.db", "faiss") == "faiss"
    assert main(["index", "--gallery", str(tiny_gallery), "--out", str(tmp_path / "g.db"),
                 "--milvus-index", "IVF_PQ"]) == 2
    assert "unknown index type" in capsys.readouterr().err
    assert not (tmp_path / "g.db").exists()  # refused before anything was written
    assert main(["serve", "--backend", "milvus", "--index", str(tmp_path / "plain_dir")]) == 2
    assert "a path ending in .db" in capsys.readouterr().err


def test_a_milvus_build_killed_anywhere_resumes_to_the_same_gallery(tiny_gallery, tiny_index, tmp_path, monkeypatch):
    """Killed between a chunk's rows and its progress, then in the embedding: no duplicates, same rows as faiss."""
    uri = str(tmp_path / "g.db")
    real_set = MilvusCollection.set

    def killed_after_rows(self, **values):
        if values.get("build_done") == 128:
            raise KeyboardInterrupt  # chunk 64..127 is upserted and flushed, its progress not recorded
        return real_set(self, **values)

    monkeypatch.setattr(MilvusCollection, "set", killed_after_rows)
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_gallery, "fashion-mnist", "HNSW", uri, chunk=64, progress=False, backend="milvus")
    monkeypatch.setattr(MilvusCollection, "set", real_set)
    col = MilvusCollection(uri)
    try:
        assert col.get("build_done") == 64 and col.count() == 128 and not col.get("complete")
    finally:
        col.close()
    with pytest.raises(EdgeQueryError, match="unfinished .64 of 200"):
        MilvusGalleryStore(uri)

    s = build_index(tiny_gallery, "fashion-mnist", "HNSW", uri, chunk=64, progress=False, backend="milvus")
    assert s["embedded_now"] == 136 and s["items"] == 200  # chunk 64..127 written again: the same ids
    col, db = MilvusCollection(uri), MetadataDB(tiny_index / DB_NAME)
    try:
        ids, emb = next(db.iter_embeddings())
        assert np.allclose(col.embeddings(ids.tolist()), emb, atol=1e-5)  # what an uninterrupted faiss build holds
        assert col.get("next_id") == 201 and col.get("factory") == "HNSW"
    finally:
        col.close()
        db.close()


def test_milvus_reindex_reuses_embeddings_and_another_model_is_refused(tiny_gallery, gallery_copy, tmp_path,
                                                                        monkeypatch):
    import edgequery.evaluate as evaluate

    g = gallery_copy("milvus-lite", tmp_path)
    with monkeypatch.context() as m:
        m.setattr(evaluate, "embed", lambda *a, **k: pytest.fail("re-indexing must not embed again"))
        s = build_index(tiny_gallery, "fashion-mnist", "IVF_FLAT,nlist=8", g.index, progress=False, backend="milvus")
        assert s["embedded_now"] == 0 and s["factory"] == "IVF_FLAT,nlist=8"
    store = MilvusGalleryStore(g.index)
    try:
        d = store.describe()
        assert d["engine"] == "milvus" and d["factory"] == "IVF_FLAT,nlist=8" and d["nprobe"] == 16 and len(store) == 200
        col = store.col
        assert store.search(col.embeddings([7]), 1)[0][0].id == 7
    finally:
        store.close()

    with pytest.raises(EdgeQueryError, match="1024 lists for 200 vectors"):  # refused; the gallery stays servable
        build_index(tiny_gallery, "fashion-mnist", "IVF_FLAT", g.index, progress=False, backend="milvus")
    store = MilvusGalleryStore(g.index)
    assert store.describe()["factory"] == "IVF_FLAT,nlist=8"
    store.close()

    ck = load_checkpoint(tiny_gallery, "gallery")
    other = tmp_path / "other.pt"
    save_checkpoint(other, {**ck, "state_dict": {**ck["state_dict"], "head.weight": ck["state_dict"]["head.weight"] * 2}})
    with pytest.raises(EdgeQueryError, match="holds an index of other model_version"):
        build_index(other, "fashion-mnist", "FLAT", g.index, progress=False, backend="milvus")
    s = build_index(other, "fashion-mnist", "FLAT", g.index, force=True, progress=False, backend="milvus")
    assert s["model_version"] == load_checkpoint(other)["model_version"] and s["items"] == 200


@pytest.mark.parametrize("backend,factory", [("faiss", "HNSW32"), ("faiss", "IVF4,Flat"),
                                             ("milvus-lite", "HNSW,M=4,efConstruction=8")])
def test_a_filtered_search_on_an_approximate_index_still_fills_k(backend, factory, tiny_gallery, tiny_splits,
                                                                   gallery_copy, tmp_path):
    """A selective filter starves an approximate search; it is widened until k items of the class are found."""
    g = gallery_copy(backend, tmp_path)
    build_index(tiny_gallery, "fashion-mnist", factory, g.index, progress=False, backend=g.engine)
    store = open_store(g.index, ef_search=1, nprobe=1, progress=False)  # as narrow as a search can be
    try:
        for i in (3, 4, 5):
            assert store.delete(i)
        labels = tiny_splits.gallery.labels.tolist()  # item id = position + 1
        label = min(set(labels), key=labels.count)  # the rarest class
        members = [i + 1 for i, c in enumerate(labels) if c == label and i + 1 not in (3, 4, 5)]
        q = np.random.default_rng(0).standard_normal((3, 128)).astype(np.float32)
        for hits in store.search(q, min(10, len(members)), label=label):
            assert len(hits) == min(10, len(members)) and {h.label for h in hits} == {label}
            assert not {3, 4, 5} & {h.id for h in hits}
        assert store.search(q, 5, label=99) == [[], [], []]
    finally:
        store.close()


def test_an_embedded_gallery_in_use_by_another_process_says_so(gallery_copy, tmp_path, capsys):
    import subprocess
    import sys
    import time

    from edgequery.commands import main

    g = gallery_copy("milvus-lite", tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pymilvus import MilvusClient; "
                               f"MilvusClient({g.index!r}); print('open', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        assert main(["serve", "--index", g.index]) == 2
        assert "in use by another process" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.2)
    store = MilvusGalleryStore(g.index)  # the lock went with the process
    assert len(store) == 200
    store.close()


@pytest.mark.slow   # three of pymilvus' 10 s channel waits
def test_a_busy_milvus_server_is_tried_again_and_a_refusing_one_is_not(edgequery_log):
    """A server that accepts connections but does not answer (here: a bare TCP listener) gets another try, with a
    warning; an address nobody listens on fails after the first (each try is pymilvus' 10 s channel wait)."""
    import socket

    from edgequery.gallery.milvus_store import connect

    with socket.create_server(("127.0.0.1", 0)) as mute:
        port = mute.getsockname()[1]
        with pytest.raises(EdgeQueryError, match=f"cannot connect to Milvus at http://127.0.0.1:{port}"):
            connect(f"http://127.0.0.1:{port}", attempts=2)
    tries = {r.getMessage() for r in edgequery_log.records if "did not answer" in r.getMessage()}
    assert len(tries) == 1 and "try 1 of 2" in tries.pop()   # (a set: the fixture may see a record twice)
    edgequery_log.clear()
    with pytest.raises(EdgeQueryError, match="cannot connect"):
        connect(f"http://127.0.0.1:{port}", attempts=2)   # closed now: refused
    assert not [r for r in edgequery_log.records if "did not answer" in r.getMessage()]
