"""Random nets of every space export to ONNX and TFLite (:mod:`edgequery.runtimes`) and run there.

Real converters and real runtimes (onnxruntime, ai_edge_litert); each conversion takes
5-30 s on two cores, hence ``slow``.
"""

import numpy as np
import pytest
import torch

from edgequery.models import build_embedding_net
from edgequery.spaces import SPACES, get_space

TOL = 1e-4  # on L2-normalised embeddings


def export_and_run(net, x, tmp_path, stem):
    """``net``'s L2-normalised embedding of ``x`` from its ONNX and its TFLite file, run in their runtimes."""
    from edgequery.runtimes.convert import to_onnx, to_tflite
    from edgequery.runtimes.run import open_runner

    res = x.shape[-1]
    onnx_path, tflite_path = to_onnx(net, res, tmp_path / f"{stem}.onnx"), to_tflite(net, res, tmp_path / f"{stem}.tflite")
    tflite = open_runner(tflite_path, "tflite")
    assert tuple(tflite.io()["input"]["shape"]) == tuple(x.shape)  # static shapes
    return open_runner(onnx_path, "onnx").embed(x.numpy()), tflite.embed(x.numpy())


def reference(net, x):
    with torch.no_grad():
        return torch.nn.functional.normalize(net(x), dim=1).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPACES))
def test_random_archs_export_to_onnx_and_tflite(name, tmp_path):
    space = get_space(name)
    arch = space.sample(np.random.default_rng(11))  # one: each costs 30 s; test_export exports a fixed arch of each space too
    torch.manual_seed(0)
    net = build_embedding_net(str(arch), embed_dim=128, num_classes=10).eval()
    x = torch.randn(1, 3, arch.resolution, arch.resolution)
    ref = reference(net, x)
    onnx_out, tflite_out = export_and_run(net, x, tmp_path, name)
    assert np.abs(onnx_out - ref).max() < TOL, str(arch)
    assert np.abs(tflite_out - ref).max() < TOL, str(arch)


@pytest.mark.slow
def test_a_low_resolution_arch_exports_with_its_resize(tmp_path):
    """Fed 32 px images, an r24 net resizes inside the graph; both runtimes agree with PyTorch."""
    arch = get_space("mbv3").parse("mbv3:r24,w0.5,k3e3-k5e4,k7e6-k3e3,k3e3-k3e3,k5e6-k3e3,k3e3-k3e4")
    net = build_embedding_net(str(arch), embed_dim=64, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    ref = reference(net, x)
    onnx_out, tflite_out = export_and_run(net, x, tmp_path, "resize")
    assert np.abs(onnx_out - ref).max() < TOL and np.abs(tflite_out - ref).max() < TOL
