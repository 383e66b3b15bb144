import pytest
import torch
from torch import nn

from edgequery.artifacts.checkpoint import CheckpointMeta
from edgequery.checkpoint import FORMAT_VERSION, checkpoint_meta, load_checkpoint, save_checkpoint
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


def test_a_schedule_in_steps_takes_exactly_those_steps(digits, tmp_path):
    """20 steps at 8 per epoch: two whole epochs and 4 steps of a third, the lr schedule ending at step 20."""
    seen = []

    def record(m, x, y, global_step):
        seen.append(global_step)
        return ClassifierLoss()(m, m(x), y)

    ck = fit(tiny_net(), record, digits, TrainConfig(steps=20, batch_size=32, lr=0.05), tmp_path / "s.pt",
             lambda m: {"kind": "gallery", "model": {"arch": "tiny", "embed_dim": 8, "num_classes": 10},
                        "state_dict": m.state_dict(), "identity": {"arch": "tiny"}})
    assert seen == list(range(20)) and ck["train"]["epochs"] == 3 and ck["train"]["complete"]
    assert ck["train"]["scheduler"]["last_epoch"] == 20


def test_zero_init_residual_starts_every_resnet_block_as_the_identity(tmp_path):
    from edgequery.models import build_trunk, zero_init_residual
    from edgequery.recipes import train_gallery

    trunk, _ = build_trunk("resnet101")
    assert zero_init_residual(trunk) == 33   # ResNet-101: 3 + 4 + 23 + 3 bottlenecks
    block = trunk.layer1[1].eval()
    x = torch.rand(1, 256, 8, 8)
    assert torch.equal(block(x), torch.relu(x))   # the branch adds 0
    mobile, _ = build_trunk("mobilenet_v3_small")
    assert zero_init_residual(mobile) == 0
    spec = DataSpec(dataset="digits", resolution=8, n_train=64, n_val=0, n_query=10, n_gallery=20)
    with pytest.raises(EdgeQueryError, match="no ResNet residual blocks"):
        train_gallery(spec, TrainConfig(steps=1, extra={"zero_init_residual": True}), tmp_path / "g.pt",
                      arch="mobilenet_v3_small")


def test_training_reduces_loss(digits, tmp_path):
    ck = _run(digits, tmp_path / "e.pt", TrainConfig(epochs=4, batch_size=32, lr=0.1))
    losses = [h["loss"] for h in ck["train"]["history"]]
    assert losses[-1] < losses[0]


# --------------------------------------------------------------------------- the checkpoint schema


def _tampered(tmp_path, name, change):
    """A copy of a real checkpoint with ``change(payload)`` applied, written as-is (no validation)."""
    payload = torch.load(tmp_path / "f.pt", weights_only=True)
    change(payload)
    torch.save(payload, tmp_path / name)
    return tmp_path / name


def test_checkpoint_schema_refuses_invented_keys_and_newer_versions(digits, tmp_path):
    ck = _run(digits, tmp_path / "f.pt", TrainConfig(epochs=1, batch_size=64))
    assert ck["format_version"] == FORMAT_VERSION == CheckpointMeta.VERSION == 3
    meta = checkpoint_meta(load_checkpoint(tmp_path / "f.pt"))
    assert meta.kind == "gallery" and meta.train.complete and meta.train.optimizer is not None
    assert "state_dict" not in meta.to_data() and "optimizer" not in meta.to_data()["train"]  # opaque: not data

    for name, change, message in [
            ("top.pt", lambda p: p.update(invented=1), "invented: unknown key"),
            ("model.pt", lambda p: p["model"].update(depth=3), "model.depth: unknown key"),
            ("train.pt", lambda p: p["train"]["config"].update(momentum=0.9), "train.config.momentum: unknown key"),
            ("newer.pt", lambda p: p.update(format_version=FORMAT_VERSION + 1), "upgrade edgequery"),
            ("foreign.pt", lambda p: p.update(format="something-else"), "not an edgequery checkpoint"),
            ("space.pt", lambda p: p["model"].update(arch="mbv3:r32"), "space config is missing")]:
        with pytest.raises(EdgeQueryError, match=message):
            load_checkpoint(_tampered(tmp_path, name, change))
    with pytest.raises(EdgeQueryError, match="invented: unknown key"):  # writers are held to it too
        save_checkpoint(tmp_path / "g.pt", {**load_checkpoint(tmp_path / "f.pt"), "invented": 1})


def test_a_version_1_checkpoint_still_loads(tmp_path):
    """Version 1 stored a search-space arch without its space: it meant the default space."""
    from edgequery.models import build_embedding_net, model_from_checkpoint
    from edgequery.spaces import get_space

    space = get_space("mbv3")
    arch = str(space.smallest())
    net = build_embedding_net(arch, 16, 10).eval()
    v1 = {"format": "edgequery-checkpoint", "format_version": 1, "kind": "query", "model_version": "0" * 16,
          "model": {"arch": arch, "embed_dim": 16, "num_classes": 10}, "state_dict": net.state_dict(),
          "identity": {"arch": arch}, "compatible_with": {"gallery_version": "1" * 16}}
    torch.save(v1, tmp_path / "v1.pt")
    ck = load_checkpoint(tmp_path / "v1.pt", "query")
    assert ck["format_version"] == 3 and ck["model"]["space"] == {"space": "mbv3"}  # its default configuration
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model_from_checkpoint(ck)(x), net(x))
    with pytest.raises(EdgeQueryError, match="format_version 0.*no upgrade path"):
        torch.save({**v1, "format_version": 0}, tmp_path / "v0.pt")
        load_checkpoint(tmp_path / "v0.pt")


def test_a_version_2_checkpoint_reads_its_augment_flag_as_the_operations_it_meant(digits, tmp_path):
    """Version 2 stored ``augment: true`` (flip and shift) or ``false``; version 3 names the operations."""
    ck = _run(digits, tmp_path / "f.pt", TrainConfig(epochs=1, batch_size=64, augment=["shift"]))
    assert ck["train"]["config"]["augment"] == ["shift"]
    for flag, ops in ((True, ["hflip", "shift"]), (False, [])):
        def to_v2(p, flag=flag):
            p.update(format_version=2)
            p["train"]["config"]["augment"] = flag
        old = load_checkpoint(_tampered(tmp_path, f"v2-{flag}.pt", to_v2))
        assert old["format_version"] == 3 and old["train"]["config"]["augment"] == ops
        assert TrainConfig(epochs=1, batch_size=64, augment=ops).differs_from({**old["train"]["config"],
                                                                               "augment": flag}) == []
    with pytest.raises(ValueError, match="unknown augmentation 'vflip'"):
        TrainConfig(augment=["vflip"])


def test_the_checkpoint_schema_types_data_specs_and_train_configs(digits, tmp_path):
    from edgequery.data import DataSpec

    _run(digits, tmp_path / "h.pt", TrainConfig(epochs=1, batch_size=64))
    payload = torch.load(tmp_path / "h.pt", weights_only=True)
    payload["data"] = DataSpec(dataset="digits", n_train=10).to_dict()
    meta = checkpoint_meta(payload)
    assert meta.data == DataSpec(dataset="digits", n_train=10) and meta.train.config.batch_size == 64
    with pytest.raises(EdgeQueryError, match="data.bogus"):
        checkpoint_meta({**payload, "data": {**payload["data"], "bogus": 1}})
    with pytest.raises(ValueError, match="momentum"):
        TrainConfig(momentum=0.9)


# --------------------------------------------------------------------------- schedules in steps, precision


def test_a_schedule_in_steps_takes_as_many_epochs_as_the_data_needs(digits, tmp_path):
    """256 images at batch 32 are 8 steps an epoch: 20 steps are 3 epochs (the last one whole)."""
    ck = _run(digits, tmp_path / "s.pt", TrainConfig(steps=20, batch_size=32))
    assert ck["train"]["epochs"] == 3 and len(ck["train"]["history"]) == 3
    assert ck["train"]["config"]["steps"] == 20
    half = load_splits(DataSpec(dataset="digits", resolution=8, n_train=128, n_val=0, n_query=50, n_gallery=200))
    assert _run(half, tmp_path / "h.pt", TrainConfig(steps=20, batch_size=32))["train"]["epochs"] == 5


def test_resuming_a_schedule_in_steps_compares_the_steps(digits, tmp_path):
    cfg = TrainConfig(steps=20, batch_size=32)
    with pytest.raises(KeyboardInterrupt):
        _run(digits, tmp_path / "r.pt", cfg, crash_at=10)
    assert prepare_output(tmp_path / "r.pt", "gallery", cfg, {"arch": "tiny"}, force=False) is not None
    for other in (TrainConfig(steps=30, batch_size=32), TrainConfig(epochs=3, batch_size=32),
                  TrainConfig(steps=20, batch_size=32, label_smoothing=0.1)):
        with pytest.raises(EdgeQueryError, match="different settings"):
            prepare_output(tmp_path / "r.pt", "gallery", other, {"arch": "tiny"}, force=False)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_is_recorded_and_weights_stay_fp32(digits, tmp_path, precision):
    ck = _run(digits, tmp_path / f"{precision}.pt", TrainConfig(epochs=2, batch_size=32, lr=0.1, precision=precision))
    assert [h["precision"] for h in ck["train"]["history"]] == [precision] * 2
    assert all(v.dtype in (torch.float32, torch.int64) for v in ck["state_dict"].values())
    losses = [h["loss"] for h in ck["train"]["history"]]
    assert losses[-1] < losses[0]


def test_auto_precision_is_a_concrete_one():
    from edgequery.train import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_label_smoothing_reaches_the_loss():
    net = tiny_net()
    emb, y = torch.nn.functional.normalize(torch.randn(16, 8), dim=1), torch.randint(0, 10, (16,))
    plain, smooth = ClassifierLoss()(net, emb, y), ClassifierLoss(0.2)(net, emb, y)
    logits = net.classifier(emb, y)
    assert torch.allclose(smooth, torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.2))
    assert not torch.allclose(plain, smooth)


def test_random_erasing_erases_one_rectangle_of_the_asked_area_in_the_asked_share():
    from edgequery.train import random_erase

    x = torch.full((2000, 1, 32, 32), 7.0)  # noise never equals 7 exactly: erased pixels are the changed ones
    out = random_erase(x, 0.5, torch.Generator().manual_seed(0))
    changed = out != x
    erased = changed.flatten(1).any(1)
    assert 0.45 < erased.float().mean() < 0.55
    share = changed[erased].flatten(1).float().mean(1)
    assert share.min() >= 0.5 / 1024 and share.max() <= 0.25 * 1.3  # rounding to whole pixels
    for m in changed[erased][:50, 0]:  # one axis-aligned rectangle: its bounding box is all erased
        rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
        assert m[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    same = random_erase(x, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out, same)  # drawn from the generator only: resumed runs see the same erasing
    assert torch.equal(random_erase(x, 0.0, torch.Generator().manual_seed(0)), x)


def test_a_different_random_erasing_setting_does_not_resume_an_unfinished_run():
    cfg = TrainConfig(steps=10, random_erasing=0.5)
    assert cfg.differs_from(TrainConfig(steps=10).to_dict()) == ["random_erasing"]
    with pytest.raises(ValueError):
        TrainConfig(random_erasing=1.5)
