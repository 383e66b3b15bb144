"""Bring your own gallery model and data: `edgequery import gallery` and `edgequery index --from-embeddings`.

The user's model is a real torchvision ResNet-101 (random weights: none can be downloaded
here) with a linear embedding head, or a whole module saved with TorchScript / torch.export;
the data is scikit-learn's digits written as an ImageFolder of PNG files (``digits_folder``).
"""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from edgequery.checkpoint import load_checkpoint
from edgequery.commands import main
from edgequery.data import DataSpec, load_splits, to_model_input
from edgequery.errors import EdgeQueryError
from edgequery.models import model_from_checkpoint
from edgequery.models.imported import class_prototypes, import_gallery

SPEC = dict(dataset="folder", resolution=32, n_val=100, n_query=100, n_gallery=300)


@pytest.fixture(scope="module")
def user_resnet(tmp_path_factory):
    """A torchvision ResNet-101 state dict and a 2048 -> 64 linear head, as a user saves them, and the
    user's own embedding function."""
    d = tmp_path_factory.mktemp("user_model")
    torch.manual_seed(0)
    net = torchvision.models.resnet101(weights=None)
    for m in net.modules():  # running statistics as a trained net has them, not the initial 0 / 1
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    head = nn.Linear(2048, 64)
    torch.save(net.state_dict(), d / "resnet101.pth")
    torch.save(head.state_dict(), d / "head.pth")
    net.fc = nn.Identity()
    net.eval()

    @torch.no_grad()
    def embed(x):
        return F.normalize(head(net(x)), dim=1)

    return d / "resnet101.pth", d / "head.pth", embed


def splits_of(digits_folder):
    spec = DataSpec(root=str(digits_folder), **SPEC)
    return spec, load_splits(spec, progress=False)


def test_an_imported_resnet101_and_head_embed_exactly_like_the_original(user_resnet, digits_folder, tmp_path):
    weights, head, original = user_resnet
    spec, splits = splits_of(digits_folder)
    ck = import_gallery(weights, tmp_path / "g.pt", spec, head_file=head, per_class=8, splits=splits)
    assert ck["model"]["arch"] == "resnet101" and ck["model"]["embed_dim"] == 64 and ck["model"]["head"] == "linear"
    assert ck["imported"]["format"] == "state-dict" and ck["imported"]["head"] == "head.pth"
    assert ck["classifier"] == {"kind": "prototypes", "images": 80, "split": "train"}

    model = model_from_checkpoint(load_checkpoint(tmp_path / "g.pt", "gallery"))
    x = to_model_input(splits.query.images[:32], spec)
    ours, theirs = model(x), original(x)
    assert F.cosine_similarity(ours, theirs).min() > 1 - 1e-5

    # the classifier BCT trains against: each class's mean embedding of 8 training images, normalised
    chosen = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))
    per_class, rows = {}, []
    for i in chosen.tolist():
        c = int(splits.train.labels[i])
        if per_class.get(c, 0) < 8:
            per_class[c] = per_class.get(c, 0) + 1
            rows.append(i)
    rows = sorted(rows)
    emb = original(to_model_input(splits.train.images[rows], spec))
    means = np.stack([emb[splits.train.labels[rows] == c].mean(0).numpy() for c in range(10)])
    expect = means / np.linalg.norm(means, axis=1, keepdims=True)
    assert np.abs(model.classifier.weight.detach().numpy() - expect).max() < 1e-4


def test_a_bgr_model_and_pooled_features_without_a_head(user_resnet, digits_folder, tmp_path):
    """A model trained on BGR images takes RGB after import (its first conv flipped), exactly."""
    weights, _, _ = user_resnet
    spec, splits = splits_of(digits_folder)
    ck = import_gallery(weights, tmp_path / "bgr.pt", spec, channel_order="bgr", per_class=2, splits=splits)
    assert ck["model"]["embed_dim"] == 2048 and ck["model"]["head"] == "none"
    assert ck["imported"]["channel_order"] == "bgr"
    bgr_model = torchvision.models.resnet101(weights=None)
    bgr_model.load_state_dict(torch.load(weights, weights_only=True))
    bgr_model.fc = nn.Identity()
    x = to_model_input(splits.query.images[:8], spec)
    with torch.no_grad():
        theirs = F.normalize(bgr_model.eval()(x.flip(1)), dim=1)  # what the user's model gives on BGR planes
        ours = model_from_checkpoint(load_checkpoint(tmp_path / "bgr.pt", "gallery"))(x)
    assert F.cosine_similarity(ours, theirs).min() > 1 - 1e-5


class Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 24)

    def forward(self, x):
        return self.fc(self.body(x))


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program", "exported-program-batch-1"])
def test_a_whole_module_saved_as_a_program_embeds_like_itself(fmt, digits_folder, tmp_path):
    torch.manual_seed(0)
    module = Embedder().eval()
    spec, splits = splits_of(digits_folder)
    x = to_model_input(splits.query.images[:6], spec)
    path = tmp_path / "embedder.pt2"
    if fmt == "torchscript":
        torch.jit.save(torch.jit.script(module), path)
    elif fmt == "exported-program":
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.export.save(torch.export.export(module, (x,), dynamic_shapes=({0: batch},)), path)
    else:  # exported for one image at a time: embedded image by image
        torch.export.save(torch.export.export(module, (x[:1],)), path)
    kind = fmt.removesuffix("-batch-1")
    ck = import_gallery(path, tmp_path / "g.pt", spec, fmt=kind, per_class=3, splits=splits)
    assert ck["model"]["arch"] == kind and ck["model"]["embed_dim"] == 24 and ck["model"]["head"] == "none"
    ours = model_from_checkpoint(load_checkpoint(tmp_path / "g.pt", "gallery"))(x)
    with torch.no_grad():
        assert F.cosine_similarity(ours, F.normalize(module(x), dim=1)).min() > 1 - 1e-6
    other = "exported-program" if kind == "torchscript" else "torchscript"
    with pytest.raises(EdgeQueryError, match=f"not a readable {other} file"):
        import_gallery(path, tmp_path / "other.pt", spec, fmt=other, splits=splits)


def test_import_refuses_what_does_not_fit(user_resnet, digits_folder, tmp_path, capsys):
    weights, head, _ = user_resnet
    spec, splits = splits_of(digits_folder)
    torch.save(nn.Linear(512, 64).state_dict(), tmp_path / "small_head.pth")
    with pytest.raises(EdgeQueryError, match=r"weight of shape \(64, 512\) does not take the trunk's 2048-d"):
        import_gallery(weights, tmp_path / "g.pt", spec, head_file=tmp_path / "small_head.pth", splits=splits)
    with pytest.raises(EdgeQueryError, match="does not fit mobilenet_v3_small"):
        import_gallery(weights, tmp_path / "g.pt", spec, arch="mobilenet_v3_small", splits=splits)
    assert not (tmp_path / "g.pt").exists()
    # the CLI: the pre-processing must be declared, numbers must be numbers
    args = ["import", "gallery", "--model", weights, "--dataset", "folder", "--data-root", digits_folder,
            "--out", tmp_path / "g.pt"]
    assert main(list(map(str, args))) == 2
    assert "--resolution is needed" in capsys.readouterr().err
    assert main(list(map(str, args + ["--resolution", "32", "--std", "0.2,0,0.2"]))) == 2
    assert "--std '0.2,0,0.2' is not three positive numbers" in capsys.readouterr().err


def test_prototypes_need_every_class():
    emb = torch.randn(6, 4)
    protos = class_prototypes(emb, torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    assert torch.allclose(protos.norm(dim=1), torch.ones(3))
    with pytest.raises(EdgeQueryError, match=r"no labelled image of class\(es\) \[3\]"):
        class_prototypes(emb, torch.tensor([0, 0, 1, 1, 2, 2]), 4)


# --------------------------------------------------------------------------- index --from-embeddings


def test_an_index_from_the_users_own_embeddings(tiny_gallery, tmp_path, capsys):
    """npz / npy / parquet in; every item's source is the user's id; bad files refused before any write."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from edgequery.gallery.service import open_store

    g = load_checkpoint(tiny_gallery, "gallery")
    dim, classes = g["model"]["embed_dim"], g["classes"]
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, dim)).astype(np.float32)
    ids = np.array([f"sku-{i:03d}" for i in range(40)])
    labels = np.array([classes[i % 3] for i in range(40)])
    np.savez(tmp_path / "mine.npz", embeddings=emb, ids=ids, labels=labels)
    np.save(tmp_path / "mine.npy", emb)
    pq.write_table(pa.table({"embedding": list(emb), "id": list(range(100, 140)), "label": [i % 3 for i in range(40)]}),
                   tmp_path / "mine.parquet")

    for name, first_source, label_name in [("mine.npz", "sku-000", classes[0]), ("mine.npy", "mine.npy#0", None),
                                           ("mine.parquet", "100", classes[0])]:
        out = tmp_path / f"index-{name}"
        assert main(["index", "--gallery", str(tiny_gallery), "--from-embeddings", str(tmp_path / name),
                     "--out", str(out)]) == 0, capsys.readouterr().err
        store = open_store(out)
        try:
            assert len(store) == 40 and store.meta("model_version") == g["model_version"]
            hit = store.search(emb[:1], 1)[0][0]
            assert hit.score == pytest.approx(1.0, abs=1e-5) and hit.source == first_source
            assert store.get(hit.id).label_name == label_name
        finally:
            store.close()

    for bad, message in [(emb[:, :-1], f"holds {dim - 1}-d embeddings, but the gallery model embeds into {dim}"),
                         (np.vstack([emb[:3], np.zeros((1, dim), np.float32)]), "1 embeddings are zero, NaN or Inf"),
                         (emb.astype(np.int32), "embeddings of type int32")]:
        np.save(tmp_path / "bad.npy", bad)
        assert main(["index", "--gallery", str(tiny_gallery), "--from-embeddings", str(tmp_path / "bad.npy"),
                     "--out", str(tmp_path / "bad-index")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad-index").exists()
    np.savez(tmp_path / "dup.npz", embeddings=emb[:2], ids=np.array(["a", "a"]))
    assert main(["index", "--gallery", str(tiny_gallery), "--from-embeddings", str(tmp_path / "dup.npz"),
                 "--out", str(tmp_path / "dup-index")]) == 2
    assert "ids are not unique" in capsys.readouterr().err


# --------------------------------------------------------------------------- the whole flow on the user's data


def run(*argv):
    code = main(["-q", *map(str, argv)])
    assert code == 0, f"edgequery {' '.join(map(str, argv))} exited {code}"


@pytest.mark.slow
def test_the_users_model_and_folder_go_import_search_retrain_export_index_serve(user_resnet, digits_folder, tmp_path,
                                                                                serve):
    """import (ResNet-101 state dict + head, prototype classifier) -> supernet -> profile -> search ->
    retrain with BCT -> export -> index the user's own gallery embeddings -> serve -> /v1/search with the
    exported net's embedding.  Digits: a flip makes another digit, so training says --augment shift."""
    import httpx
    import onnxruntime as ort

    weights, head, original = user_resnet
    d = tmp_path
    data = ["--dataset", "folder", "--data-root", digits_folder, "--resolution", 32, "--n-val", 100,
            "--n-query", 100, "--n-gallery", 300]
    train = ["--epochs", 1, "--batch-size", 64, "--augment", "shift"]
    run("import", "gallery", "--model", weights, "--head", head, *data, "--prototype-images", 20,
        "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--out", d / "gallery.pt")  # the user's pre-processing
    gck = load_checkpoint(d / "gallery.pt", "gallery")
    assert gck["classifier"]["kind"] == "prototypes" and gck["classes"] == [str(i) for i in range(10)]

    space = ["--space", "mbv3", "--space-option", "resolutions=32", "--space-option", "depths=2",
             "--space-option", "kernels=3", "--space-option", "expands=3,4"]  # a small space: a quick profile
    run("train", "supernet", *space, "--gallery", d / "gallery.pt", "--out", d / "supernet.pt", *train)
    assert load_checkpoint(d / "supernet.pt", "supernet")["train"]["config"]["augment"] == ["shift"]
    run("profile", "--supernet", d / "supernet.pt", "--runtime", "onnxruntime", "--resolution", 32, "--threads", 1,
        "--warmup", 2, "--runs", 5, "--min-seconds", 0, "--rounds", 1, "--out", d / "lut.json")
    run("search", "--supernet", d / "supernet.pt", "--gallery", d / "gallery.pt", "--lut", d / "lut.json",
        "--latency-budget", "1000ms", "--population", 4, "--generations", 2, "--recal-batches", 2,
        "--out", d / "search.json")
    run("train", "query", "--arch", d / "search.json", "--gallery", d / "gallery.pt", "--out", d / "query.pt", *train)
    qck = load_checkpoint(d / "query.pt", "query")
    assert qck["compatible_with"]["gallery_version"] == gck["model_version"]
    assert qck["data"]["dataset"] == "folder" and qck["train"]["config"]["augment"] == ["shift"]

    run("export", "--query", d / "query.pt", "--gallery", d / "gallery.pt", "--formats", "onnx", "--threads", 1,
        "--runs", 5, "--warmup", 2, "--parity-images", 16, "--out", d / "export")
    card = json.loads((d / "export" / "model_card.json").read_text())
    assert card["input"]["mean"] == [0.5] * 3 and card["input"]["std"] == [0.25] * 3  # carried to the app
    assert card["input"]["resolution"] == 32

    # the user's gallery, embedded by their own model (not by edgequery), with their own ids
    spec, splits = splits_of(digits_folder)
    spec = replace(spec, mean=(0.5,) * 3, std=(0.25,) * 3)
    gallery_emb = original(to_model_input(splits.gallery.images, spec)).numpy()
    ids = np.array([f"item-{i}" for i in range(len(gallery_emb))])
    np.savez(d / "theirs.npz", embeddings=gallery_emb, ids=ids,
             labels=np.array([str(int(v)) for v in splits.gallery.labels]))
    run("index", "--gallery", d / "gallery.pt", "--from-embeddings", d / "theirs.npz", "--out", d / "index")

    onnx_file = next(f["file"] for f in card["files"] if f["format"] == "onnx")
    session = ort.InferenceSession(str(d / "export" / onnx_file))
    x = to_model_input(splits.query.images[:1], spec).numpy()
    query = session.run(None, {session.get_inputs()[0].name: x})[0][0]
    s = serve(d / "index", "--export", d / "export", log_dir=d)
    try:
        r = httpx.post(s.url + "/v1/search", json={"embedding": query.tolist(), "model_version": card["model_version"],
                                                   "k": 5})
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert len(hits) == 5 and all(h["source"].startswith("item-") for h in hits)
        assert {h["label_name"] for h in hits} <= {str(i) for i in range(10)}
        assert httpx.post(s.url + "/v1/search", json={"embedding": query.tolist(), "model_version": "0" * 16}
                          ).status_code == 409
    finally:
        s.stop()
