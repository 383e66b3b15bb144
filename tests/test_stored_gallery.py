"""A stored gallery (the gallery model's embeddings of known images + its classifier) stands in for the
trained model exactly where the benchmarks need it: same embeddings, same classifier, same BCT training."""

import pytest
import torch

from edgequery.checkpoint import load_checkpoint, state_hash
from edgequery.errors import EdgeQueryError
from edgequery.evaluate import embed, evaluate_pair
from edgequery.models import StoredGallery, model_from_checkpoint, store_gallery


@pytest.fixture(scope="module")
def stored(tmp_path_factory, tiny_gallery, tiny_splits):
    out = tmp_path_factory.mktemp("stored") / "gallery-stored.pt"
    # the query split twice: an image in several sets is stored once
    store_gallery(tiny_gallery, {"query": tiny_splits.query, "gallery": tiny_splits.gallery,
                                 "again": tiny_splits.query}, out)
    return out


def test_a_stored_gallery_gives_the_models_embeddings_and_classifier(stored, tiny_gallery, tiny_splits):
    full, ck = load_checkpoint(tiny_gallery, "gallery"), load_checkpoint(stored, "gallery")
    assert ck["model_version"] == full["model_version"]
    assert ck["stored"]["sets"] == {"query": 50, "gallery": 200, "again": 50}
    assert ck["stored"]["images"] == len(ck["state_dict"]["stored.keys"]) <= 250
    assert ck["stored"]["source_state_hash"] == state_hash(full["state_dict"])
    g, model = model_from_checkpoint(ck), model_from_checkpoint(full)
    assert isinstance(g, StoredGallery) and g.embed_dim == 128
    spec = tiny_splits.spec
    assert torch.equal(embed(g, tiny_splits.gallery, spec), embed(model, tiny_splits.gallery, spec))  # same batch
    part = tiny_splits.query.subset(torch.arange(7, 19))  # another batch size: the same up to float rounding
    assert torch.allclose(embed(g, part, spec), embed(model, part, spec), atol=1e-5)
    assert torch.equal(g.classifier.weight, model.classifier.weight)
    assert (g.classifier.scale, g.classifier.margin) == (model.classifier.scale, model.classifier.margin)


def test_a_stored_gallery_refuses_what_it_cannot_do(stored, tiny_gallery, tiny_splits, tmp_path):
    g = model_from_checkpoint(load_checkpoint(stored, "gallery"))
    with pytest.raises(EdgeQueryError, match=r"3 of 5 images are not among the \d+ whose embeddings"):
        embed(g, torch.cat([tiny_splits.train.images[:3], tiny_splits.query.images[:2]]), tiny_splits.spec)
    with pytest.raises(EdgeQueryError, match="cannot run on image tensors"):
        g(torch.zeros(1, 3, 32, 32))
    with pytest.raises(EdgeQueryError, match="uint8"):
        g.lookup(torch.zeros(1, 3, 32, 32))
    with pytest.raises(EdgeQueryError, match="is a stored gallery already"):
        store_gallery(stored, {"query": tiny_splits.query}, tmp_path / "again.pt")
    with pytest.raises(EdgeQueryError, match="no images to store"):
        store_gallery(tiny_gallery, {"query": tiny_splits.query.subset(torch.arange(0))}, tmp_path / "none.pt")


@pytest.mark.slow
def test_bct_against_a_stored_gallery_trains_and_scores_as_against_the_model(stored, tiny_gallery, tiny_splits,
                                                                              tmp_path):
    from edgequery.recipes import train_query
    from edgequery.train import TrainConfig

    cfg = TrainConfig(epochs=1, batch_size=32)
    a, b = tmp_path / "vs-model.pt", tmp_path / "vs-stored.pt"
    train_query(tiny_gallery, cfg, a, bct=True, splits=tiny_splits)
    train_query(stored, cfg, b, bct=True, splits=tiny_splits)
    qa, qb = load_checkpoint(a, "query"), load_checkpoint(b, "query")
    assert qa["model_version"] == qb["model_version"]  # bit for bit the same training
    assert qb["compatible_with"]["gallery_version"] == load_checkpoint(tiny_gallery)["model_version"]
    net = model_from_checkpoint(qa)
    ra = evaluate_pair(net, model_from_checkpoint(load_checkpoint(tiny_gallery)), tiny_splits)
    rb = evaluate_pair(net, model_from_checkpoint(load_checkpoint(stored)), tiny_splits)
    assert ra == rb


@pytest.mark.slow
def test_the_server_refuses_a_stored_gallery(stored, tiny_index, tmp_path):
    import shutil

    from edgequery.gallery.service import open_service

    index = shutil.copytree(tiny_index, tmp_path / "index")
    with pytest.raises(EdgeQueryError, match="could not embed uploaded images"):
        open_service(index, gallery_path=str(stored), progress=False)
