"""How much memory a device has free: the Model Manager's pre-check and the worker's gauges.

System RAM comes from psutil. GPU memory comes from NVML (``nvidia-ml-py``, the ``gpu`` extra)
when it is installed, else from torch when torch is importable; NVML is preferred because
asking torch creates a CUDA context (hundreds of MiB) in a process that may never use torch.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import psutil

from duplexd.errors import InvalidArgument, ResourceExhausted

__all__ = ["available_bytes", "process_rss_bytes", "total_bytes"]

# Devices whose memory is the machine's RAM ("mps" is Apple's unified memory).
_RAM_DEVICES = ("cpu", "auto", "mps")


def available_bytes(device: str) -> int:
    """Bytes a new model could use on `device` right now ("cpu", "auto", "mps", "cuda[:N]")."""
    if device in _RAM_DEVICES:
        return int(psutil.virtual_memory().available)
    return _cuda_memory(device)[0]


def total_bytes(device: str) -> int:
    """The device's whole memory (RAM for CPU devices, VRAM for "cuda[:N]")."""
    if device in _RAM_DEVICES:
        return int(psutil.virtual_memory().total)
    return _cuda_memory(device)[1]


def process_rss_bytes() -> int:
    """This process's resident set size (what loading a CPU model grows)."""
    return int(psutil.Process().memory_info().rss)


def _cuda_index(device: str) -> int:
    name, _, index = device.partition(":")
    if name != "cuda" or (index and not index.isdigit()):
        raise InvalidArgument(
            f"unknown device {device!r}", hint='use "cpu", "auto", "mps", "cuda" or "cuda:N"'
        )
    return int(index or 0)


def _cuda_memory(device: str) -> tuple[int, int]:
    """(free, total) bytes of one CUDA device."""
    index = _cuda_index(device)
    for probe in (_nvml_memory, _torch_memory):
        found = probe(index)
        if found is not None:
            return found
    raise ResourceExhausted(
        f"cannot measure free memory on {device}: neither NVML nor torch is available",
        hint="install the gpu extra (`pip install duplex[gpu]`, nvidia-ml-py) or run on cpu",
    )


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _nvml_memory(index: int) -> tuple[int, int] | None:
    pynvml = _optional("pynvml")
    if pynvml is None:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None  # no driver: let torch (or the error above) answer
    try:
        info = pynvml.nvmlDeviceGetMemoryInfo(_nvml_handle(pynvml, index))
        return int(info.free), int(info.total)
    finally:
        pynvml.nvmlShutdown()


def _nvml_handle(pynvml: Any, index: int) -> Any:
    # NVML numbers physical GPUs; CUDA (and so "cuda:N") numbers those CUDA_VISIBLE_DEVICES
    # lists, which is how a worker is given its GPU. Translate, or we would measure another card.
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
    if not visible:
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    if index >= len(visible):
        raise InvalidArgument(f"cuda:{index} does not exist: CUDA_VISIBLE_DEVICES={visible}")
    chosen = visible[index]
    if chosen.isdigit():
        return pynvml.nvmlDeviceGetHandleByIndex(int(chosen))
    return pynvml.nvmlDeviceGetHandleByUUID(chosen)


def _torch_memory(index: int) -> tuple[int, int] | None:
    torch = _optional("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(index)
    return int(free), int(total)
