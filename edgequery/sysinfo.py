"""What machine and software a figure was measured on (recorded in every result file).

The identity part is the timing agent's :func:`~edgequery.runtimes.agent.fingerprint`
(the same function runs on a board over ssh); this adds the host's Python-side facts.
"""

from __future__ import annotations

from .runtimes.agent import cpu_model, fingerprint

__all__ = ["cpu_model", "fingerprint", "machine_info"]


def machine_info() -> dict:
    import torch

    info = fingerprint()
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), cuda=torch.cuda.is_available())
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
