"""Every net a space builds exports to ONNX (dynamo, opset 18) and TFLite (litert-torch) and runs there.

Real converters and real runtimes (onnxruntime, ai_edge_litert's Interpreter); each
conversion takes 10-30 s on two shared cores, hence ``slow``.
"""

import numpy as np
import pytest
import torch

from edgequery.models import build_embedding_net
from edgequery.spaces import SPACES, get_space

TOL = 1e-4  # on L2-normalised embeddings


def export_and_run(net, x, tmp_path, stem):
    import litert_torch
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    onnx_path, tflite_path = tmp_path / f"{stem}.onnx", tmp_path / f"{stem}.tflite"
    torch.onnx.export(net, (x,), str(onnx_path), dynamo=True, opset_version=18)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]

    litert_torch.convert(net.eval(), (x,)).export(str(tflite_path))
    interp = Interpreter(model_path=str(tflite_path))
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    assert tuple(inp["shape"]) == tuple(x.shape)  # static shapes
    interp.set_tensor(inp["index"], x.numpy())
    interp.invoke()
    tflite_out = interp.get_tensor(interp.get_output_details()[0]["index"])
    return onnx_out, tflite_out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPACES))
def test_five_random_archs_export_to_onnx_and_tflite(name, tmp_path):
    space = get_space(name)
    rng = np.random.default_rng(11)
    for i in range(5):
        arch = space.sample(rng)
        torch.manual_seed(i)
        net = build_embedding_net(str(arch), embed_dim=128, num_classes=10).eval()
        x = torch.randn(1, 3, arch.resolution, arch.resolution)
        with torch.no_grad():
            ref = net(x).numpy()
        onnx_out, tflite_out = export_and_run(net, x, tmp_path, f"{name}{i}")
        assert np.abs(onnx_out - ref).max() < TOL, str(arch)
        assert np.abs(tflite_out - ref).max() < TOL, str(arch)


@pytest.mark.slow
def test_a_low_resolution_arch_exports_with_its_resize(tmp_path):
    """Fed 32 px images, an r24 net resizes inside the graph; both runtimes agree with PyTorch."""
    arch = get_space("mbv3").parse("mbv3:r24,w0.5,k3e3-k5e4,k7e6-k3e3,k3e3-k3e3,k5e6-k3e3,k3e3-k3e4")
    net = build_embedding_net(str(arch), embed_dim=64, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = net(x).numpy()
    onnx_out, tflite_out = export_and_run(net, x, tmp_path, "resize")
    assert np.abs(onnx_out - ref).max() < TOL and np.abs(tflite_out - ref).max() < TOL
