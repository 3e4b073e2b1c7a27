"""Which device a model runs on: `auto | cpu | cuda[:N]`, resolved once per load.

Precedence: the worker's `device` (config / `--device`) when it is not `auto`, else the
model's catalog `device`, else auto-detection: torch families go to `cuda:0` when torch sees a
GPU, everything else (ONNX voices, espeak) to the CPU. A GPU request is checked against what
torch sees, so `cuda:3` on a one-GPU box fails at load with the count, not deep in an engine.
"""

from __future__ import annotations

import functools
import importlib.util

from duplexd.errors import FailedPrecondition, InvalidArgument, ModelLoadError

__all__ = ["cuda_device_count", "require_gpu", "resolve_device"]


def resolve_device(worker_device: str, model_device: str, *, uses_torch: bool) -> str:
    """The concrete device (`cpu` or `cuda:N`) for one model; raises if it cannot be had."""
    requested = worker_device if worker_device != "auto" else model_device
    if requested == "auto":
        return "cuda:0" if uses_torch and cuda_device_count() > 0 else "cpu"
    if requested in ("cpu", "mps"):
        return requested
    name, _, index = requested.partition(":")
    if name != "cuda" or (index and not index.isdigit()):
        raise InvalidArgument(
            f"unknown device {requested!r}", hint='use "auto", "cpu", "cuda" or "cuda:N"'
        )
    device = f"cuda:{index or 0}"
    if uses_torch:
        count = cuda_device_count()
        if int(index or 0) >= count:
            raise ModelLoadError(
                f"{device} requested but torch sees {count} CUDA device(s)",
                hint="use device: auto or cpu, or check CUDA_VISIBLE_DEVICES and the driver",
            )
    return device


def require_gpu(model_id: str, device: str, needs_gpu: bool) -> None:
    """Refuse to put a GPU-only model on the CPU."""
    if needs_gpu and not device.startswith("cuda"):
        raise FailedPrecondition(
            f"model {model_id!r} needs a GPU and this worker resolved device {device!r}",
            hint="run it on a worker with a CUDA GPU (`duplexd worker --device cuda:0`)",
        )


@functools.cache
def cuda_device_count() -> int:
    """CUDA devices torch can use (0 without torch): imported only when a torch family asks."""
    if importlib.util.find_spec("torch") is None:
        return 0
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
