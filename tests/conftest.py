"""Shared fixtures: tiny real models trained once per session, and ``edgequery serve`` subprocesses.

No test module imports another; what several need lives here:

* ``tiny_spec`` / ``tiny_splits`` — a small Fashion-MNIST split (256 train, 50 query,
  200 gallery images at 32 px);
* ``tiny_gallery`` — a real gallery checkpoint (MobileNetV3-small trunk, 1 epoch on the
  256 training images): the ResNet-101 code path in seconds on CPU;
* ``tiny_query`` — a 1-epoch query net trained with BCT against ``tiny_gallery``;
* ``tiny_export`` — a real ``edgequery export`` of ``tiny_query`` (ONNX only, a few timing
  runs): its folder holds the ``model_card.json`` the server is started with;
* ``digits_folder`` — scikit-learn's digits as an ImageFolder of PNG files (a user's own data);
* ``tiny_index`` — a Flat index of the gallery split built with ``tiny_gallery``.  It is
  shared: open it read-only, or copy it (``shutil.copytree``) before serving or changing it;
* ``gallery_copy`` — ``gallery_copy(backend, tmp_path) -> (index, flags)``: a fresh, writable
  copy of the tiny gallery on ``faiss`` (a copy of ``tiny_index``), ``milvus-lite`` (embedded
  Milvus Lite, a ``.db`` folder) or ``milvus-server`` (a new collection on ``milvus_server``),
  and the ``edgequery serve`` flags that open it;
* ``milvus_server`` — ``milvus-lite server`` in a subprocess on 127.0.0.1 (a real gRPC
  Milvus endpoint): its URI;
* ``serve`` — starts ``edgequery serve`` in a subprocess (:class:`Server`) and stops
  whatever is still running at the end of the session;
* ``chromium`` — a headless Chromium (Debian's ``chromium``) driven over the DevTools
  protocol (:class:`edgequery.gallery.browser.Chromium`), closed after the test; the test is skipped, saying why, when
  no Chromium is installed;
* ``edgequery_log`` — ``caplog`` for edgequery's loggers, also once the CLI has set them up.

Session fixtures are made on first use, so a run that needs none of them pays nothing.
"""

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` (the README's test command): one intra-op thread per worker, so two workers share
    # two cores instead of four threads fighting over them (subprocesses inherit it).
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# pymilvus runs logging.config.dictConfig when first imported: that shuts down every logging handler made so
# far and disables every logger that exists. Imported mid-test (the first Milvus test of a worker), it broke
# pytest's log capture for the rest of that worker ("I/O operation on closed file"); imported here, before
# any test or edgequery logger exists, it changes nothing.
with contextlib.suppress(ImportError):
    import pymilvus  # noqa: F401

TINY_SPEC = dict(resolution=32, n_train=256, n_val=0, n_query=50, n_gallery=200)


# --------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="session")
def tiny_spec():
    from edgequery.data import DataSpec

    return DataSpec(**TINY_SPEC)


@pytest.fixture(scope="session")
def tiny_splits(tiny_spec):
    from edgequery.data import load_splits

    return load_splits(tiny_spec, progress=False)


@pytest.fixture(scope="session")
def tiny_gallery(tmp_path_factory, tiny_spec, tiny_splits) -> Path:
    """The tiny gallery checkpoint (~5 s to train)."""
    from edgequery.recipes import train_gallery
    from edgequery.train import TrainConfig

    path = tmp_path_factory.mktemp("tiny_gallery") / "gallery.pt"
    # batch 32 (8 steps), not the default 128 (2 steps): after 2 steps BatchNorm's running
    # statistics are still near their initial values and, in eval mode, MobileNetV3 at 32 px
    # maps every image to (numerically) the same embedding.
    train_gallery(tiny_spec, TrainConfig(epochs=1, batch_size=32), path, arch="mobilenet_v3_small",
                  splits=tiny_splits)
    return path


@pytest.fixture(scope="session")
def tiny_query(tmp_path_factory, tiny_gallery, tiny_splits) -> Path:
    """A 1-epoch BCT query checkpoint compatible with ``tiny_gallery``."""
    from edgequery.recipes import train_query
    from edgequery.train import TrainConfig

    path = tmp_path_factory.mktemp("tiny_query") / "query.pt"
    train_query(tiny_gallery, TrainConfig(epochs=1, batch_size=32), path, bct=True, splits=tiny_splits)
    return path


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_query, tiny_gallery) -> Path:
    """The export folder of ``tiny_query`` (ONNX, checked against ``tiny_gallery``; ~10 s)."""
    from edgequery.export import ExportOptions, export_query

    out = tmp_path_factory.mktemp("tiny_export") / "tiny_query"
    export_query(tiny_query, out, tiny_gallery, ExportOptions(formats=("onnx",), threads=(1,), warmup=1, runs=3,
                                                              parity_images=16, verify_images=4, progress=False))
    return out


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory, tiny_gallery) -> Path:
    """A Flat index of the tiny gallery split (shared: copy it before serving or writing to it)."""
    from edgequery.gallery.build import build_index

    out = tmp_path_factory.mktemp("tiny_index") / "index"
    build_index(tiny_gallery, "fashion-mnist", "Flat", out, progress=False)
    return out


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """scikit-learn's 1797 digits written as an ImageFolder (``<root>/<digit>/<n>.png``, 8x8 grey PNGs): a
    user's own small labelled image set, from images a package ships."""
    from PIL import Image

    from edgequery.data import load_digits

    root = tmp_path_factory.mktemp("digits_folder") / "digits"
    d = load_digits()
    for i, (img, label) in enumerate(zip(d.images, d.labels.tolist())):
        (root / d.classes[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy(), "L").save(root / d.classes[label] / f"{i:04d}.png")
    return root


GALLERY_BACKENDS = ("faiss", "milvus-lite", "milvus-server")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory) -> str:
    """``milvus-lite server`` on 127.0.0.1 (started on first use, stopped at the end): its URI."""
    from edgequery.gallery.milvus_store import lite_server

    data = tmp_path_factory.mktemp("milvus_server")
    with lite_server(data / "data", data / "server.log", timeout=60) as (uri, _pid):
        yield uri


@pytest.fixture(scope="session")
def gallery_copy(request, tiny_index, tiny_gallery):
    """``gallery_copy(backend, tmp_path)``: a fresh writable copy of the tiny gallery.

    It has ``index`` (what ``serve --index`` takes), ``engine`` (faiss or milvus),
    ``collection`` and ``flags`` (the rest of what ``serve`` needs to open it).  faiss
    copies ``tiny_index``; Milvus builds the same 200 images (a FLAT index: exact, like
    faiss' Flat) with ``edgequery index``'s own code, embedded or on ``milvus_server``.
    """
    import shutil
    import uuid
    from types import SimpleNamespace

    from edgequery.gallery.build import build_index

    def copy(backend: str, tmp_path: Path) -> SimpleNamespace:
        if backend == "faiss":
            out = tmp_path / "index"
            shutil.copytree(tiny_index, out, ignore=shutil.ignore_patterns("*.log", ".lock"))
            return SimpleNamespace(index=str(out), engine="faiss", collection="gallery", flags=[])
        if backend == "milvus-lite":
            uri, collection = str(tmp_path / "gallery.db"), "gallery"
        else:
            uri, collection = request.getfixturevalue("milvus_server"), f"g_{uuid.uuid4().hex[:12]}"
        build_index(tiny_gallery, "fashion-mnist", "FLAT", uri, progress=False, backend="milvus",
                    collection=collection)
        return SimpleNamespace(index=uri, engine="milvus", collection=collection, flags=["--collection", collection])

    return copy


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``edgequery serve`` in a subprocess; ready once /healthz answers.

    ``token`` is put in the server's environment (``None``: a read-only server); the
    server's output (stdout and stderr) goes to ``server-<port>.log`` in ``log_dir``.
    """

    def __init__(self, index, *flags, token=None, log_dir=None):
        import httpx

        from edgequery.gallery.guard import TOKEN_ENV

        self.index = str(index)  # a directory or a Milvus URI
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        if token:
            env[TOKEN_ENV] = token
        self.log_path = Path(log_dir) / f"server-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgequery.commands", "serve", "--index", str(index), "--port", str(self.port),
             "--log-level", "warning", *map(str, flags)], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                self.kill9()
                raise AssertionError(f"server not ready after 120 s:\n{self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        self.log.close()

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="session")
def serve():
    """``serve(index, *flags, token=None, log_dir=None) -> Server``; leftovers are stopped at the end."""
    started: list[Server] = []

    def start(index, *flags, **kw) -> Server:
        s = Server(index, *flags, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.kill9()


# --------------------------------------------------------------------------- a real browser

@pytest.fixture
def chromium():
    """A started :class:`Chromium`, closed after the test (skipped when none is installed)."""
    from edgequery.gallery.browser import CHROMIUM, Chromium

    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    browser = Chromium()
    try:
        yield browser
    finally:
        browser.close()


# --------------------------------------------------------------------------- logs


@pytest.fixture
def edgequery_log(caplog):
    """``caplog`` attached to the ``edgequery`` logger itself: the CLI's setup_logging turns its
    propagation off, so records would otherwise never reach caplog's root handler."""
    logger = logging.getLogger("edgequery")
    level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)
