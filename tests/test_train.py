import pytest
import torch
from torch import nn

from edgequery.checkpoint import load_checkpoint
from edgequery.data import DataSpec, load_splits
from edgequery.errors import EdgeQueryError
from edgequery.models import CosineClassifier, EmbeddingNet
from edgequery.train import BCTLoss, ClassifierLoss, TrainConfig, fit, prepare_output


def tiny_net(num_classes=10, dim=8, seed=0):
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten())
    return EmbeddingNet(trunk, 4, dim, num_classes)


@pytest.fixture(scope="module")
def digits():
    return load_splits(DataSpec(dataset="digits", resolution=8, n_train=256, n_val=0, n_query=50, n_gallery=200))


def test_bct_gradients_reach_only_the_query_net():
    query = tiny_net()
    gallery_cls = CosineClassifier(8, 10)
    before = gallery_cls.weight.detach().clone()
    loss_fn = BCTLoss(gallery_cls, weight=1.0)
    opt = torch.optim.SGD(list(query.parameters()), lr=0.5)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    loss = loss_fn(query, query(x), y)
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in query.parameters())
    assert all(p.grad is None and not p.requires_grad for p in loss_fn.gallery_classifier.parameters())
    assert torch.equal(loss_fn.gallery_classifier.weight, before)
    loss_fn.train()
    assert not loss_fn.gallery_classifier.training


def test_bct_influence_term_is_the_frozen_classifier_cross_entropy():
    query = tiny_net()
    gallery_cls = CosineClassifier(8, 10)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    emb = query(x)
    own = ClassifierLoss()(query, emb, y)
    total = BCTLoss(gallery_cls, weight=2.0)(query, emb, y)
    influence = torch.nn.functional.cross_entropy(gallery_cls(emb, y), y)
    assert torch.allclose(total, own + 2.0 * influence)


def _run(splits, out, cfg, resume=None, crash_at=None):
    model = tiny_net()
    loss_fn = ClassifierLoss()

    def step(m, x, y, global_step):
        if crash_at is not None and global_step == crash_at:
            raise KeyboardInterrupt  # a run killed part-way through an epoch
        return loss_fn(m, m(x), y)

    def payload(m):
        return {"kind": "gallery", "model": {"arch": "tiny", "embed_dim": 8, "num_classes": 10},
                "state_dict": m.state_dict(), "identity": {"arch": "tiny"}}

    return fit(model, step, splits, cfg, out, payload, resume=resume)


def test_resume_after_a_kill_gives_the_same_weights(digits, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05)
    straight = _run(digits, tmp_path / "a.pt", cfg)
    steps_per_epoch = 256 // 32
    with pytest.raises(KeyboardInterrupt):
        _run(digits, tmp_path / "b.pt", cfg, crash_at=int(1.5 * steps_per_epoch))
    partial = load_checkpoint(tmp_path / "b.pt", "gallery")
    assert partial["train"]["epoch"] == 1 and not partial["train"]["complete"]
    resumed = _run(digits, tmp_path / "b.pt", cfg, resume=prepare_output(tmp_path / "b.pt", "gallery", cfg,
                                                                          {"arch": "tiny"}, force=False))
    assert resumed["train"]["complete"]
    assert resumed["model_version"] == straight["model_version"]
    for k, v in straight["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k


def test_prepare_output_refuses_to_clobber_or_mix(digits, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=64)
    _run(digits, tmp_path / "c.pt", cfg)
    with pytest.raises(EdgeQueryError, match="--force"):
        prepare_output(tmp_path / "c.pt", "gallery", cfg, {"arch": "tiny"}, force=False)
    assert prepare_output(tmp_path / "c.pt", "gallery", cfg, {"arch": "tiny"}, force=True) is None
    cfg2 = TrainConfig(epochs=2, batch_size=64)
    with pytest.raises(KeyboardInterrupt):
        _run(digits, tmp_path / "d.pt", cfg2, crash_at=5)
    with pytest.raises(EdgeQueryError, match="different settings"):
        prepare_output(tmp_path / "d.pt", "gallery", TrainConfig(epochs=2, batch_size=64, lr=0.3),
                       {"arch": "tiny"}, force=False)
    with pytest.raises(EdgeQueryError, match="query model is needed"):
        prepare_output(tmp_path / "d.pt", "query", cfg2, {"arch": "tiny"}, force=False)


def test_training_reduces_loss(digits, tmp_path):
    ck = _run(digits, tmp_path / "e.pt", TrainConfig(epochs=4, batch_size=32, lr=0.1))
    losses = [h["loss"] for h in ck["train"]["history"]]
    assert losses[-1] < losses[0]
