"""The bottom layer shared by export and latency: turn a module into a runtime's file, run it, time it.

* :mod:`.convert` - PyTorch -> ``.tflite`` (litert-torch), ``.onnx`` (torch.onnx dynamo),
  ``.pt2`` (torch.export); quantization of those files;
* :mod:`.run` - run a file the way an app does (ai-edge-litert, onnxruntime) at batch 1;
* :mod:`.agent` - the self-contained timing script (stdlib + numpy + the runtime) that
  times files here and on a board over ssh, and reads the machine's fingerprint; its
  timing loop is the one every latency figure comes from.

Nothing here imports :mod:`edgequery.export` or :mod:`edgequery.latency`.
"""
