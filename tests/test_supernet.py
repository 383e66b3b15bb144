"""The weight-sharing supernet: extraction parity, OFA/SPOS sharing, BN recalibration, BCT training, DDP."""

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from edgequery.checkpoint import load_checkpoint
from edgequery.data import to_model_input
from edgequery.errors import EdgeQueryError
from edgequery.spaces import SPACES, get_space
from edgequery.spaces.mbv3 import expanded
from edgequery.spaces.supernet import Supernet, recalibrate_bn
from edgequery.spaces.training import archs_for_step, load_supernet, train_supernet
from edgequery.train import TrainConfig

NAMES = list(SPACES)


@pytest.fixture
def gallery(tiny_gallery, tiny_splits):
    """The session's tiny gallery model (conftest: MobileNetV3-small, 1 epoch on 256 images) and its splits."""
    return tiny_gallery, tiny_splits


def randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so eval-mode parity means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize("name", NAMES)
def test_extracted_subnets_equal_the_supernet(name):
    space = get_space(name)
    torch.manual_seed(0)
    sn = Supernet(space, embed_dim=64, num_classes=10)
    randomise_bn(sn)
    sn.eval()
    x = torch.randn(4, 3, 32, 32)
    rng = np.random.default_rng(0)
    worst = 0.0
    for arch in [space.sample(rng) for _ in range(20)]:
        net = sn.extract(arch)
        assert not net.training
        assert set(net.trunk.state_dict()) == set(space.build(arch)[0].state_dict())
        with torch.no_grad():
            worst = max(worst, float((sn(x, arch) - net(x)).abs().max()))
    assert worst <= 1e-5
    # the extracted weights are copies: training the subnet leaves the supernet alone
    before = {k: v.clone() for k, v in sn.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in sn.state_dict().items())
    # several archs in one call (the sandwich rule's path)
    a, b = space.largest(), space.smallest()
    ya, yb = sn(x, [a, b])
    assert torch.equal(ya, sn(x, a)) and torch.equal(yb, sn(x, str(b)))
    # in-place distillation: the later archs pulled towards the first one's (detached) embedding
    def no_loss(model, e, y):
        return 0.0 * e.sum()

    sn.eval()
    pulled = sn(x, [a, b], criterion=no_loss, labels=None, distill=2.0)
    assert float(pulled) == pytest.approx(2.0 * float((1 - torch.nn.functional.cosine_similarity(yb, ya)).mean()),
                                          rel=1e-5)
    assert float(sn(x, [a, b], criterion=no_loss, labels=None)) == 0.0


def test_mbv3_sharing_is_centre_kernel_first_channels_first_blocks():
    space = get_space("mbv3")
    sn = Supernet(space, embed_dim=16, num_classes=10).train()
    arch = space.parse("mbv3:r32,w0.5,k3e3-k5e4,k3e3-k3e3,k3e3-k3e3,k3e3-k3e3,k3e3-k3e3")
    sn(torch.randn(8, 3, 32, 32), arch).pow(3).sum().backward()
    blk = space.blocks(arch)[2]  # stage 1, block 1
    mid = expanded(blk.in_shape[0], 3)
    dw = sn.trunk["s1b0"].block[1][0].weight.grad  # the slot holds 7x7 kernels at the widest expansion
    assert dw.shape[-1] == 7 and dw.shape[0] > mid
    inside = torch.zeros_like(dw, dtype=torch.bool)
    inside[:mid, :, 2:5, 2:5] = True  # the centre 3x3 of the first `mid` channels
    assert dw[inside].abs().sum() > 0 and dw[~inside].abs().sum() == 0
    proj = sn.trunk["s1b0"].block[-1][0].weight.grad
    assert proj[blk.out_shape[0]:].abs().sum() == 0 and proj[:, mid:].abs().sum() == 0
    dw5 = sn.trunk["s1b1"].block[1][0].weight.grad  # kernel 5: centre 5x5
    assert dw5[:, :, 1:6, 1:6].abs().sum() > 0 and dw5[:, :, 0].abs().sum() == 0
    for skipped in ("s1b2", "s1b3", "s5b3"):  # elastic depth: only the first blocks run
        assert all(p.grad is None for p in sn.trunk[skipped].parameters())


def test_shufflenet_choice_blocks_are_separate():
    space = get_space("shufflenet")
    sn = Supernet(space, embed_dim=16, num_classes=10).train()
    arch = space.smallest()  # k3 everywhere, middle channels x0.5
    sn(torch.randn(8, 3, 32, 32), arch).pow(3).sum().backward()
    assert all(p.grad is None for op in ("k5", "k7", "x3") for p in sn.trunk[f"s2b1_{op}"].parameters())
    pw1 = sn.trunk["s2b1_k3"].branch_main[0][0].weight.grad  # 80 -> mid (x0.5 of 80 = 40 of 120 kept)
    assert pw1[:40].abs().sum() > 0 and pw1[40:].abs().sum() == 0


def test_bn_recalibration_re_estimates_statistics(gallery):
    _, splits = gallery
    space = get_space("mbv3")
    sn = Supernet(space, embed_dim=16, num_classes=10)
    randomise_bn(sn)
    net = sn.extract(space.sample(np.random.default_rng(3)))
    weights = {k: v.clone() for k, v in net.named_parameters()}
    images = splits.train.subset(torch.arange(128))
    out = recalibrate_bn(net, images, splits.spec, batches=4, batch_size=32)
    assert out is net and not net.training
    stem_conv, stem_bn = net.trunk.blocks[0][0], net.trunk.blocks[0][1]
    with torch.no_grad():
        conv_mean = stem_conv(to_model_input(images.images, splits.spec)).mean(dim=(0, 2, 3))
    # four equal batches, cumulative average: the running mean is the mean over all 128 images
    assert torch.allclose(stem_bn.running_mean, conv_mean, atol=1e-4)
    assert stem_bn.momentum == 0.1 and int(stem_bn.num_batches_tracked) == 4
    assert all(torch.equal(weights[k], v) for k, v in net.named_parameters())
    sub = sn.subnet(space.smallest(), images, splits.spec, batches=2, batch_size=32)
    assert not sub.training and int(sub.trunk.blocks[0][1].num_batches_tracked) == 2


def test_arch_sampling_is_a_function_of_seed_and_step():
    space = get_space("mbv3")
    assert archs_for_step(space, 0, 5) == archs_for_step(space, 0, 5)
    assert len({str(archs_for_step(space, 0, s)[0]) for s in range(20)}) > 15
    assert archs_for_step(space, 1, 5) != archs_for_step(space, 0, 5)
    top, bottom, rand = archs_for_step(space, 0, 7, "sandwich")
    assert (top, bottom) == (space.largest(), space.smallest()) and rand == archs_for_step(space, 0, 7)[0]
    with pytest.raises(EdgeQueryError, match="uniform, sandwich"):
        archs_for_step(space, 0, 0, "greedy")


def test_supernet_training_checkpoints_and_resumes(gallery, tmp_path, monkeypatch):
    gallery_path, splits = gallery
    splits = replace(splits, train=splits.train.subset(torch.arange(128)))  # 2 steps per epoch
    gallery = load_checkpoint(gallery_path, "gallery")
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05)
    straight = train_supernet(gallery_path, cfg, tmp_path / "a.pt", space="shufflenet", splits=splits)
    assert straight["kind"] == "supernet" and straight["train"]["complete"]
    assert straight["compatible_with"]["gallery_version"] == gallery["model_version"]
    assert straight["train"]["config"]["extra"] == {"find_unused_parameters": True, "sampling": "uniform"}

    import edgequery.spaces.training as training

    real = training.archs_for_step

    def crash_at_step_3(space, seed, step, rule="uniform"):
        if step == 3:
            raise KeyboardInterrupt  # killed part-way through epoch 2
        return real(space, seed, step, rule)

    monkeypatch.setattr(training, "archs_for_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_supernet(gallery_path, cfg, tmp_path / "b.pt", space="shufflenet", splits=splits)
    monkeypatch.setattr(training, "archs_for_step", real)
    assert load_checkpoint(tmp_path / "b.pt", "supernet")["train"]["epoch"] == 1
    with pytest.raises(EdgeQueryError, match="different settings"):
        train_supernet(gallery_path, cfg, tmp_path / "b.pt", space="shufflenet", sandwich=True, splits=splits)
    with pytest.raises(EdgeQueryError, match="needs the sandwich rule"):
        train_supernet(gallery_path, cfg, tmp_path / "d.pt", space="shufflenet", distill=1.0, splits=splits)
    resumed = train_supernet(gallery_path, cfg, tmp_path / "b.pt", space="shufflenet", splits=splits)
    assert resumed["model_version"] == straight["model_version"]  # same archs, same batches, same weights
    distilled = train_supernet(gallery_path, cfg.model_copy(update={"epochs": 1}), tmp_path / "e.pt",
                               space="shufflenet", sandwich=True, distill=1.0, splits=splits)
    assert distilled["sampling"] == {"rule": "sandwich", "seed": 0, "distill": 1.0}
    assert distilled["identity"]["distill"] == 1.0 and distilled["train"]["config"]["extra"]["distill"] == 1.0

    sn, ck = load_supernet(tmp_path / "b.pt")
    assert isinstance(sn, Supernet) and sn.space.name == "shufflenet" and not sn.training
    net = sn.extract(sn.space.smallest())
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, gallery["model"]["embed_dim"])
    with pytest.raises(EdgeQueryError, match="already holds a fully trained supernet"):
        train_supernet(gallery_path, cfg, tmp_path / "b.pt", space="shufflenet", splits=splits)
    with pytest.raises(EdgeQueryError, match="holds a supernet model, but a gallery model is needed"):
        train_supernet(tmp_path / "b.pt", cfg, tmp_path / "c.pt", splits=splits)


def eq(*args, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "edgequery.commands", *map(str, args)], capture_output=True, text=True,
                          env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"edgequery {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


@pytest.mark.slow
def test_cli_trains_a_sandwich_supernet(gallery, tmp_path, capsys):
    gallery_path, _ = gallery
    proc = eq("train", "supernet", "--space", "shufflenet", "--gallery", gallery_path, "--out", tmp_path / "s.pt",
              "--sandwich", "--epochs", "1", "--batch-size", "64", "--n-train", "128")
    assert "wrote" in proc.stderr and "compatible with gallery" in proc.stderr
    ck = load_checkpoint(tmp_path / "s.pt", "supernet")
    assert ck["sampling"]["rule"] == "sandwich" and ck["model"]["space"]["space"] == "shufflenet"
    from edgequery.commands import main  # the same entry point, in-process: no second torch import

    capsys.readouterr()
    assert main(["train", "supernet", "--gallery", str(tmp_path / "s.pt"), "--out", str(tmp_path / "t.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a supernet model, but a gallery model is needed" in err[0]
    with pytest.raises(SystemExit) as exit_:
        main(["train", "supernet", "--space", "nasnet", "--gallery", str(gallery_path)])
    assert exit_.value.code == 2 and "invalid choice: 'nasnet'" in capsys.readouterr().err

    # --space-option configures the space; the checkpoint carries the configuration and rebuilds in it
    assert main(["train", "supernet", "--space", "mbv3", "--space-option", "resolutions=40",
                 "--space-option", "widths=0.5", "--space-option", "depths=2", "--gallery", str(gallery_path),
                 "--out", str(tmp_path / "m.pt"), "--epochs", "1", "--batch-size", "64", "--n-train", "128"]) == 0
    sn, ck = load_supernet(tmp_path / "m.pt")
    assert ck["model"]["space"] == sn.space.config() and sn.space.resolutions == (40,) and sn.space.widths == (0.5,)
    assert sn.extract(sn.space.smallest()).trunk.resolution == 40
    assert main(["train", "supernet", "--space-option", "resolutions=4O", "--gallery", str(gallery_path)]) == 2
    assert "resolutions" in capsys.readouterr().err


@pytest.mark.slow
def test_supernet_trains_under_torchrun_with_two_processes(gallery, tmp_path):
    """DDP on 2 CPU processes (gloo): every rank samples the same arch, unused slots are allowed."""
    gallery_path, _ = gallery
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "edgequery.commands", "train", "supernet", "--space", "mbv3", "--gallery", str(gallery_path),
           "--out", str(tmp_path / "ddp.pt"), "--epochs", "2", "--batch-size", "32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "ddp.pt", "supernet")
    assert ck["train"]["complete"] and len(ck["train"]["history"]) == 2
    # 256 images split over 2 ranks, 32 per batch: 4 optimizer steps per epoch (8 on one process)
    assert ck["train"]["scheduler"]["last_epoch"] == 2 * 4
    assert proc.stderr.count("[supernet mbv3]") == 2  # one summary line per epoch, from rank 0 only
