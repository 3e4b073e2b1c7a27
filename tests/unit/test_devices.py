"""Device resolution: worker setting > model's catalog device > auto-detection."""

from __future__ import annotations

import pytest

from duplexd.errors import FailedPrecondition, InvalidArgument, ModelLoadError
from duplexd.tts import devices
from duplexd.tts.devices import require_gpu, resolve_device


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Set how many CUDA devices "torch sees" (the real probe is covered on GPU machines)."""
    count = [0]
    monkeypatch.setattr(devices, "cuda_device_count", lambda: count[0])
    return count


def test_auto_puts_torch_on_a_gpu_only_when_one_is_seen(gpus: list[int]) -> None:
    assert resolve_device("auto", "auto", uses_torch=True) == "cpu"
    gpus[0] = 2
    assert resolve_device("auto", "auto", uses_torch=True) == "cuda:0"
    assert resolve_device("auto", "auto", uses_torch=False) == "cpu", "ONNX voices stay on CPU"


def test_worker_setting_beats_the_catalog_and_catalog_beats_auto(gpus: list[int]) -> None:
    gpus[0] = 2
    assert resolve_device("cpu", "cuda:1", uses_torch=True) == "cpu"
    assert resolve_device("auto", "cuda:1", uses_torch=True) == "cuda:1"
    assert resolve_device("auto", "cpu", uses_torch=True) == "cpu"
    assert resolve_device("cuda", "auto", uses_torch=True) == "cuda:0"


def test_bad_devices_are_refused_with_what_exists(gpus: list[int]) -> None:
    gpus[0] = 1
    with pytest.raises(ModelLoadError, match=r"cuda:3 requested but torch sees 1 CUDA"):
        resolve_device("cuda:3", "auto", uses_torch=True)
    with pytest.raises(InvalidArgument, match="unknown device 'tpu'"):
        resolve_device("tpu", "auto", uses_torch=True)
    with pytest.raises(FailedPrecondition, match="needs a GPU"):
        require_gpu("big-model", "cpu", needs_gpu=True)
    require_gpu("big-model", "cuda:0", needs_gpu=True)


def test_the_real_probe_answers_without_a_gpu() -> None:
    devices.cuda_device_count.cache_clear()
    assert devices.cuda_device_count() >= 0
