"""Piper voices (onnxruntime VITS), the CPU default.

Piper's `synthesize()` returns one chunk per sentence; the session's text chunker already cuts
clauses, so each call here is short. The ONNX session is built here rather than by
`PiperVoice.load` so its thread count follows the worker's config: on a 2-core box several
sessions each spinning every core would make all of them late.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from duplexd.audio.pcm import Float32Array, Int16Array
from duplexd.errors import ModelLoadError, WeightsMissing
from duplexd.tts.adapters.base import TTSAdapter

__all__ = ["PiperAdapter"]


class PiperAdapter(TTSAdapter):
    family = "piper"

    _voice: Any = None

    def _load(self) -> None:
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        model_path = self.meta.weights_path()
        config_path = Path(f"{model_path}.json")
        if not config_path.exists():
            raise WeightsMissing(f"Piper voice config missing: {config_path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        providers = (
            ["CUDAExecutionProvider"]
            if self.device.startswith("cuda")
            else ["CPUExecutionProvider"]
        )
        try:
            config = PiperConfig.from_dict(json.loads(config_path.read_text()))
            session = onnxruntime.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"{model_path} is not a loadable Piper voice: {exc}") from exc
        self._voice = PiperVoice(session=session, config=config)
        self._syn_config = self._synthesis_config()

    @property
    def sample_rate(self) -> int:
        return int(self._voice.config.sample_rate) if self._voice else self.meta.native_sr

    def _synthesis_config(self) -> Any:
        from piper import SynthesisConfig

        opts = self.meta.options
        return SynthesisConfig(
            length_scale=opts.get("length_scale"),
            noise_scale=opts.get("noise_scale"),
            noise_w_scale=opts.get("noise_w_scale"),
            volume=float(opts.get("volume", 1.0)),
        )

    def _generate(
        self, text: str, voice: str | None, language: str | None
    ) -> Iterator[Float32Array | Int16Array]:
        for chunk in self._voice.synthesize(text, syn_config=self._syn_config):
            yield chunk.audio_float_array

    def _close(self) -> None:
        self._voice = None
