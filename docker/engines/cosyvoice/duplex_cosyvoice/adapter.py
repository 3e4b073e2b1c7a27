"""CosyVoice 2 (FunAudioLLM CosyVoice2-0.5B) as a duplexd TTS family: ``cosyvoice2``.

Runs only in the CosyVoice image's own environment (torch 2.3.1, transformers 4.40.1,
numpy 1.26: pins that cannot share the project's uv.lock). The CosyVoice 2 runtime code comes
from PyPI's ``cosyvoice2-eu`` wheel, which bundles the upstream ``cosyvoice`` and ``matcha``
packages (the ``cosyvoice`` 0.0.8 sdist on PyPI lacks ``cosyvoice.cli``/``cosyvoice.utils`` and
cannot load any model).

Weights are never baked into the image: they live in the models volume, by default
``$DUPLEX_MODELS_DIR/cosyvoice2/CosyVoice2-0.5B`` (the layout of the FunAudioLLM/CosyVoice2-0.5B
repository), plus a zero-shot prompt: a short 16 kHz+ WAV of the target voice and its
transcript. `_load` checks all of it before touching torch and names every missing piece.

Synthesis is zero-shot streaming (``inference_zero_shot(..., stream=True)``): CosyVoice 2 yields
24 kHz chunks of speech tokens decoded by its flow-matching + HiFT vocoder; the base class
resamples them to the 48 kHz / 20 ms wire frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from duplexd.errors import ModelLoadError, WeightsMissing
from duplexd.tts.adapters.base import TTSAdapter

__all__ = ["REQUIRED_FILES", "CosyVoice2Adapter", "missing_pieces"]

# What CosyVoice2(model_dir) opens (FunAudioLLM/CosyVoice2-0.5B layout).
REQUIRED_FILES = (
    "cosyvoice2.yaml",
    "llm.pt",
    "flow.pt",
    "hift.pt",
    "campplus.onnx",
    "speech_tokenizer_v2.onnx",
    "CosyVoice-BlankEN/config.json",
)
IMAGE_HINT = "this family runs in the tts-cosyvoice image (docker/tts-cosyvoice.Dockerfile)"
WEIGHTS_HINT = (
    "put the FunAudioLLM/CosyVoice2-0.5B files in the models volume, e.g. on a host that can "
    "reach Hugging Face: `huggingface-cli download FunAudioLLM/CosyVoice2-0.5B --local-dir "
    "<models>/cosyvoice2/CosyVoice2-0.5B` (or ModelScope iic/CosyVoice2-0.5B), plus a prompt "
    "WAV and its transcript (voicepack options prompt_wav / prompt_text)"
)


def missing_pieces(model_dir: Path, prompt_wav: Path | None) -> list[str]:
    """Every file CosyVoice 2 needs that is not there, as paths."""
    missing = [str(model_dir / name) for name in REQUIRED_FILES if not (model_dir / name).exists()]
    if prompt_wav is None or not prompt_wav.is_file():
        missing.append(f"{prompt_wav or '(no prompt_wav option)'} (zero-shot prompt WAV)")
    return missing


class CosyVoice2Adapter(TTSAdapter):
    family = "cosyvoice2"

    _model: Any = None
    _prompt: Any = None
    _rate: int = 24000

    def _resolve(self, ref: str | None) -> Path | None:
        if not ref:
            return None
        if ref.startswith("models://"):
            root = self.meta.models_dir or Path(os.environ.get("DUPLEX_MODELS_DIR", "models"))
            return root / ref.removeprefix("models://")
        path = Path(ref).expanduser()
        return path if path.is_absolute() else self.meta.base_dir / path

    def _load(self) -> None:
        # Name everything that is missing at once: the code, then each weight file.
        try:
            from cosyvoice.cli.cosyvoice import CosyVoice2
            from cosyvoice.utils.file_utils import load_wav
        except ImportError as exc:
            code_error: str | None = f"the CosyVoice 2 code cannot be imported ({exc})"
        else:
            code_error = None
        model_dir = self._resolve(self.meta.weights)
        if model_dir is None:
            raise WeightsMissing(f"{self.meta.model_id}: no `weights:` in its catalog entry")
        prompt_wav = self._resolve(self.meta.options.get("prompt_wav"))
        missing = missing_pieces(model_dir, prompt_wav)
        if code_error and not missing:
            raise ModelLoadError(f"{self.meta.model_id}: {code_error}", hint=IMAGE_HINT)
        if missing:
            problems = ([code_error] if code_error else []) + [
                f"CosyVoice 2 weights missing: {', '.join(missing)}"
            ]
            raise WeightsMissing(f"{self.meta.model_id}: {'; '.join(problems)}", hint=WEIGHTS_HINT)
        import torch

        cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        if self.device.startswith("cuda") and not cuda:
            raise ModelLoadError(
                f"{self.meta.model_id}: device {self.device} asked for, but torch "
                f"{torch.__version__} sees no CUDA device",
                hint="reserve a GPU for the container, or set DUPLEX_WORKER__DEVICE=cpu",
            )
        torch.set_num_threads(max(self.threads, 1))
        official_layout = (model_dir / "llm.pt").exists()
        self._model = CosyVoice2(
            str(model_dir), load_jit=False, load_trt=False, fp16=cuda, final=official_layout
        )
        self._rate = int(self._model.sample_rate)
        assert prompt_wav is not None
        self._prompt = load_wav(str(prompt_wav), 16000)
        self._prompt_text = str(self.meta.options.get("prompt_text", ""))

    @property
    def sample_rate(self) -> int:
        return self._rate

    def _generate(self, text: str, voice: str | None, language: str | None) -> Iterator[Any]:
        if self._model is None:
            raise ModelLoadError(f"{self.meta.model_id} used before load")
        speed = float(self.meta.options.get("speed", 1.0))
        for out in self._model.inference_zero_shot(
            text, self._prompt_text, self._prompt, stream=True, speed=speed
        ):
            speech = out["tts_speech"]
            yield speech.squeeze(0).detach().cpu().numpy().astype(np.float32)

    def _close(self) -> None:
        self._model = None
        self._prompt = None
