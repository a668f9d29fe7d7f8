"""Device names users pass (``--device``, ``--vae-device``, a flow's ``device``), checked before any work."""
from __future__ import annotations

from typing import Optional

from mimicmotion.errors import ConfigError


def check_device(device) -> str:
    """``device`` ("cpu", "cuda" or "cuda:N") once it is known to exist on this machine; a ConfigError that
    names the fix otherwise (before any model is loaded)."""
    import torch

    name = str(device).strip()
    if name == "cpu":
        return name
    parts = name.split(":")
    if parts[0] != "cuda" or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: torch finds no CUDA GPU on this machine (torch.cuda.is_available() is "
                          "False: a CPU build of torch, or no GPU visible); run with --device cpu, or on a machine "
                          "with a GPU and a CUDA build of torch")
    index = int(parts[1]) if len(parts) == 2 else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return name


def resolve_device(device: Optional[str] = None) -> str:
    """A checked device: ``device`` when given, else cuda when torch sees a GPU, else cpu."""
    if device is None or str(device).strip() == "":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(device)
