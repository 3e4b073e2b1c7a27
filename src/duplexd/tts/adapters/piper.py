"""Piper voices (onnxruntime VITS), the CPU default, streamed within a sentence.

A Piper voice is one ONNX graph: text encoder, duration predictor and flow (phonemes → a latent
of one frame per 256 samples), then a HiFi-GAN decoder (latent → audio) that is most of the
time. `PiperVoice.synthesize()` runs it whole, one chunk per sentence, so the first sample of a
22-character unit took ~180 ms of one core. Here the graph is cut in two at the decoder's input
(`onnx.utils`, found by its weight `dec.conv_pre.weight`, so any Piper export works): the encoder
runs once per sentence, then the latent is decoded in chunks, `FIRST_FRAMES` first (~0.19 s of
audio), `CHUNK_FRAMES` after, each with `CONTEXT_FRAMES` of latent on either side that are
decoded and dropped. The decoder is convolutional, so with that context the chunks join to the
whole-sentence decode (measured > 100 dB SNR) while the first audio comes after the encoder plus
one small chunk: 65-75 ms instead of 165-180 ms for a 20-40-character unit, 35-45 instead of
45-60 for a short one, for 10-25 % more CPU per sentence (the context decoded twice). A voice
whose graph cannot be cut (no `onnx` package, an unknown layout) or a voicepack's
``options: {stream: false}`` synthesizes whole sentences as before; the log says which. The cut
(~1.5 s, most of it importing onnx) is made once and kept in `split_cache()`, with the encoder
as onnxruntime rewrote it, so a later load takes ~0.3 s instead of the whole voice's ~0.55 s.

Loudness: Piper scales each sentence to a peak of 1.0, which needs the whole sentence first.
Streamed audio gets a fixed gain instead (``options: {gain: …}``, default `STREAM_GAIN`: the
joe voice's raw sentence peaks are 0.29-0.73, median 0.53, over the built-in replies), clipped to
[-1, 1], so sentences keep their relative loudness rather than each being pushed to full scale.

The session's text chunker already cuts clauses, so each call here is short. The ONNX sessions
are built here rather than by `PiperVoice.load` so their thread count follows the worker's
config: on a 2-core box several sessions each spinning every core would make all of them late.

Memory: onnxruntime's CPU arena grows to the largest Run it has served (in power-of-two steps)
and never gives anything back, so a worker's RSS crept up with every longer unit (+45-55 % over
a few dozen utterances on two synthesis threads, and ~1 GB kept after one 4,000-character unit).
A streamed decoder never runs on more than `CHUNK_FRAMES` + 2 × `CONTEXT_FRAMES` frames, so its
arena stays small whatever the sentence. Every Run of the sentence-long graphs (the encoder, or
the whole voice when it is not streamed) asks the arena to shrink back to its first block when
it ends (``memory.enable_memory_arena_shrinkage``); with the worker's fixed mmap threshold
(``worker.malloc_mmap_threshold_kb``) the freed blocks go back to the OS. Measured here: RSS flat
(+0.5-1.4 %) over the same load, for 0-12 % more CPU time (page faults on the regrown blocks;
docs/benchmarks.md, soak). A voicepack's ``options: {arena_shrink: false}`` keeps the old
behaviour for that voice (its arena then only grows).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from duplexd.audio.pcm import Float32Array, Int16Array
from duplexd.errors import ModelLoadError, WeightsMissing
from duplexd.logging import get_logger
from duplexd.tts.adapters.base import TTSAdapter

__all__ = ["CHUNK_FRAMES", "CONTEXT_FRAMES", "FIRST_FRAMES", "STREAM_GAIN", "PiperAdapter"]

log = get_logger("duplexd.tts.adapters.piper")

FIRST_FRAMES = 16  # a sentence's first decoded chunk: 16 x 256 samples, ~0.19 s at 22.05 kHz
CHUNK_FRAMES = 96  # the chunks after it (~1.1 s): each is decoded while the one before plays
CONTEXT_FRAMES = 12  # latent decoded on each side of a chunk and dropped (8: 62 dB, 12+: >100)
STREAM_GAIN = 1.35  # streamed audio's fixed gain: ~the inverse of the voice's loudest peaks
_DECODER_WEIGHT = "dec.conv_pre.weight"  # VITS's decoder: its first conv reads the latent
_SPEAKER_WEIGHT = "dec.cond.weight"  # multi-speaker voices: the decoder also reads g
_CUT_VERSION = 1  # bumped when the way a voice is cut changes: older cuts are not read


class PiperAdapter(TTSAdapter):
    family = "piper"

    _voice: Any = None
    _stream: _Stream | None = None

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
        opts = self.meta.options
        shrink = bool(opts.get("arena_shrink", True))
        try:
            config = PiperConfig.from_dict(json.loads(config_path.read_text()))
            split = _split_voice(model_path, split_cache()) if opts.get("stream", True) else None
            if split is None:
                session: Any = onnxruntime.InferenceSession(
                    str(model_path), options, providers=providers
                )
                self._stream = None
            else:
                encoder, decoder = split.sessions(options, providers)
                session = encoder  # what PiperVoice would run; only its phonemizer is used
                self._stream = _Stream(
                    _ShrinkingSession(encoder) if shrink else encoder, decoder,
                    split.latent, split.extra, hop=config.hop_length,
                )  # fmt: skip
        except Exception as exc:
            raise ModelLoadError(f"{model_path} is not a loadable Piper voice: {exc}") from exc
        if shrink and self._stream is None:
            session = _ShrinkingSession(session)
        self._voice = PiperVoice(session=session, config=config)
        self._syn_config = self._synthesis_config()
        self._gain = float(opts.get("gain", STREAM_GAIN)) * float(opts.get("volume", 1.0))
        log.info(
            "piper voice loaded", model=self.meta.model_id,
            decode="streamed" if self._stream else "whole sentences",
        )  # fmt: skip

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

    @property
    def streaming(self) -> bool:
        """Whether sentences are decoded in chunks (False: whole, as `PiperVoice` does)."""
        return self._stream is not None

    def _generate(
        self, text: str, voice: str | None, language: str | None
    ) -> Iterator[Float32Array | Int16Array]:
        if self._stream is None:
            for chunk in self._voice.synthesize(text, syn_config=self._syn_config):
                yield chunk.audio_float_array
            return
        piper, syn = self._voice, self._syn_config
        config = piper.config
        scales = np.array([
            config.noise_scale if syn.noise_scale is None else syn.noise_scale,
            config.length_scale if syn.length_scale is None else syn.length_scale,
            config.noise_w_scale if syn.noise_w_scale is None else syn.noise_w_scale,
        ], dtype=np.float32)  # fmt: skip
        speaker = config.default_speaker_id if config.num_speakers > 1 else None
        for phonemes in piper.phonemize(text):
            if phonemes:
                ids = piper.phonemes_to_ids(phonemes)
                for audio in self._stream.sentence(ids, scales, speaker):
                    yield np.clip(audio * self._gain, -1.0, 1.0).astype(np.float32)

    def _close(self) -> None:
        self._voice = self._stream = None


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


@dataclass(frozen=True, slots=True)
class _Split:
    folder: Path  # encoder.onnx (phonemes → latent) and decoder.onnx (latent → audio)
    latent: str  # the tensor between them
    extra: tuple[str, ...]  # other tensors the decoder reads from the encoder's side
    temporary: bool = False  # not kept (the cache could not be written): removed once read

    def sessions(self, options: Any, providers: list[str]) -> tuple[Any, Any]:
        # Read from files: built from bytes, onnxruntime keeps a second copy of the weights.
        import onnxruntime

        encoder = self.folder / "encoder.onnx"
        if providers == ["CPUExecutionProvider"] and not self.temporary:
            encoder = self._optimized(encoder, onnxruntime)
        try:
            return (
                onnxruntime.InferenceSession(str(encoder), options, providers=providers),
                onnxruntime.InferenceSession(
                    str(self.folder / "decoder.onnx"), options, providers=providers
                ),
            )
        finally:
            if self.temporary:
                shutil.rmtree(self.folder, ignore_errors=True)

    def _optimized(self, encoder: Path, onnxruntime: Any) -> Path:
        """The encoder after onnxruntime's graph rewrites, saved once per onnxruntime version:
        its ~1,500 small nodes took 350-550 ms to optimize at every load, the saved graph
        loads in ~190 ms and runs as fast. Only the hardware-independent rewrites are saved
        (`ORT_ENABLE_EXTENDED`); the layout ones are still made at load. CPU only: the fused
        nodes are CPU kernels."""
        saved = self.folder / f"encoder.cpu-ort{onnxruntime.__version__}.onnx"
        if saved.is_file():
            return saved
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        part = saved.with_name(f".{saved.name}.{os.getpid()}")
        options.optimized_model_filepath = str(part)
        try:
            onnxruntime.InferenceSession(str(encoder), options, providers=["CPUExecutionProvider"])
            part.rename(saved)
        except Exception as exc:  # a read-only cache (onnxruntime's own error type)
            log.warning("piper: the optimized encoder could not be saved", error=str(exc))
            return encoder  # optimized at every load, as before
        finally:
            part.unlink(missing_ok=True)
        return saved


def split_cache() -> Path:
    """Where cut voices are kept: cutting one takes ~1.5 s (importing onnx is most of it)."""
    return Path(platformdirs.user_cache_dir("duplex")) / "piper-split"


def _split_voice(model_path: Path, cache: Path) -> _Split | None:
    """The voice's graph cut at its decoder's input (cut once, then read from `cache`), or
    None, said in the log, when it can't be."""
    stat = model_path.stat()
    folder = cache / f"{model_path.stem}-{stat.st_size}-{stat.st_mtime_ns}-{_CUT_VERSION}"
    if folder.exists():  # published whole (renamed into place), so only damage breaks it
        try:
            names = json.loads((folder / "split.json").read_text())
            if all((folder / name).is_file() for name in ("encoder.onnx", "decoder.onnx")):
                return _Split(folder, names["latent"], tuple(names["extra"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a broken entry (edited, files removed): cut again
        shutil.rmtree(folder, ignore_errors=True)
    try:
        import onnx
        from onnx.utils import Extractor
    except ImportError:
        log.warning("piper: the onnx package is missing: sentences are synthesized whole")
        return None
    model = onnx.load(str(model_path))
    readers = {name: node for node in model.graph.node for name in node.input}
    if _DECODER_WEIGHT not in readers:
        log.warning("piper: no VITS decoder found in the graph: sentences are synthesized whole",
                    model=str(model_path))  # fmt: skip
        return None
    latent = readers[_DECODER_WEIGHT].input[0]
    speaker = readers.get(_SPEAKER_WEIGHT)
    extra = (speaker.input[0],) if speaker is not None else ()
    extractor = Extractor(model)
    inputs = [tensor.name for tensor in model.graph.input]
    outputs = [model.graph.output[0].name]
    halves = (
        extractor.extract_model(inputs, [latent, *extra]),
        extractor.extract_model([latent, *extra], outputs),
    )
    names = {"latent": latent, "extra": list(extra)}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache))
        try:  # built beside it and renamed into place: `folder` is complete or absent
            _write_split(tmp, halves, names, onnx)
            with contextlib.suppress(OSError):  # another worker cut the same voice meanwhile
                tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:  # a read-only or full cache: cut for this load only
        log.warning("piper: the cut voice cannot be kept; it is cut at every load",
                    cache=str(cache), error=str(exc))  # fmt: skip
        folder = Path(tempfile.mkdtemp(prefix="duplex-piper-"))
        try:
            _write_split(folder, halves, names, onnx)
        except OSError as again:
            shutil.rmtree(folder, ignore_errors=True)
            log.warning("piper: no room to cut the voice: sentences are synthesized whole",
                        error=str(again))  # fmt: skip
            return None
        return _Split(folder, latent, extra, temporary=True)
    log.info("piper: voice cut for streaming", model=str(model_path), cache=str(folder))
    return _Split(folder, latent, extra)


def _write_split(folder: Path, halves: tuple[Any, Any], names: dict[str, Any], onnx: Any) -> None:
    onnx.save(halves[0], str(folder / "encoder.onnx"))
    onnx.save(halves[1], str(folder / "decoder.onnx"))
    (folder / "split.json").write_text(json.dumps(names))


class _Stream:
    """Runs a split voice: the encoder once per sentence, the decoder chunk by chunk."""

    def __init__(
        self, encoder: Any, decoder: Any, latent: str, extra: tuple[str, ...], *, hop: int
    ) -> None:
        self.encoder, self.decoder = encoder, decoder
        self.latent, self.extra, self.hop = latent, extra, hop

    def sentence(
        self, ids: list[int], scales: Float32Array, speaker: int | None
    ) -> Iterator[Float32Array]:
        feed: dict[str, Any] = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": scales,
        }
        if speaker is not None:
            feed["sid"] = np.array([speaker], dtype=np.int64)
        latent, *extra = self.encoder.run([self.latent, *self.extra], feed)
        conditioning = dict(zip(self.extra, extra, strict=True))
        frames = latent.shape[2]
        start = 0
        while start < frames:
            end = min(frames, start + (FIRST_FRAMES if start == 0 else CHUNK_FRAMES))
            lo, hi = max(0, start - CONTEXT_FRAMES), min(frames, end + CONTEXT_FRAMES)
            out = self.decoder.run(None, {self.latent: latent[:, :, lo:hi], **conditioning})
            audio = np.asarray(out[0], dtype=np.float32).reshape(-1)
            yield audio[(start - lo) * self.hop : (end - lo) * self.hop]
            start = end
