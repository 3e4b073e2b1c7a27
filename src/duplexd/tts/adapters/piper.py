"""Piper voices (onnxruntime VITS), the CPU default.

Piper's `synthesize()` returns one chunk per sentence; the session's text chunker already cuts
clauses, so each call here is short. The ONNX session is built here rather than by
`PiperVoice.load` so its thread count follows the worker's config: on a 2-core box several
sessions each spinning every core would make all of them late.

Memory: onnxruntime's CPU arena grows to the largest Run it has served (in power-of-two steps)
and never gives anything back, so a worker's RSS crept up with every longer unit (+45-55 % over
a few dozen utterances on two synthesis threads, and ~1 GB kept after one 4,000-character unit).
Every Run therefore asks the arena to shrink back to its first block when it ends
(``memory.enable_memory_arena_shrinkage``); with the worker's fixed mmap threshold
(``worker.malloc_mmap_threshold_kb``) the freed blocks go back to the OS. Measured here: RSS flat
(+0.5-1.4 %) over the same load, for 0-12 % more CPU time (page faults on the regrown blocks;
docs/benchmarks.md, soak). A voicepack's ``options: {arena_shrink: false}`` keeps the old
behaviour for that voice (its arena then only grows).
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
        if self.meta.options.get("arena_shrink", True):
            session = _ShrinkingSession(session)
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


class _ShrinkingSession:
    """The InferenceSession PiperVoice calls, with the arena shrunk after every Run."""

    def __init__(self, session: Any) -> None:
        import onnxruntime

        self._session = session
        self._run_options = onnxruntime.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        return self._session.run(output_names, input_feed, run_options or self._run_options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)
