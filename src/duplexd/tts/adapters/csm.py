"""Sesame CSM (transformers' `CsmForConditionalGeneration` + Mimi), with PEFT LoRA voices.

Streaming. `generate()` only returns audio once the whole utterance is done, so this adapter
runs the same two-level loop itself, a few frames at a time: per 80 ms frame the backbone (a
Llama) samples codebook 0 from its KV cache and the depth decoder samples the other codebooks;
every chunk of frames (`first_chunk_frames`, then `frames_per_chunk`) is decoded and yielded.
With greedy settings the codes equal `generate(do_sample=False, depth_decoder_do_sample=False)`.

Decoding chunks without clicks. Mimi is causal, so the audio of frame t depends only on
frames <= t; decoding each chunk on its own would still restart the decoder's left context
(its transformer and convolutions) at every boundary. `_MimiStream` keeps it instead: the
decoder transformer runs incrementally on a KV cache (full causal attention, as
`MimiModel.decode` computes it without flash attention), and the upsampling and SEANet
convolutions re-run over just enough previous positions to cover their receptive field, of
which only the new samples are kept. The concatenated chunks equal one `codec_model.decode` of
all codes (up to float rounding): no seams at chunk boundaries.

LoRA voices. A LoRA voice is its own catalog entry (`base_model: <this model>`); the Model
Manager attaches it to the resident base with `attach_lora`, which loads only the adapter into
the base (peft wraps the base's own modules in place on the first attach; no second copy) and
returns a `CsmLoraVoice` handle whose `close()` deletes just that adapter. peft's active adapter
is global state of the shared modules, so every chunk of every session on this base runs under
the base's lock with its own selection (an adapter, or adapters disabled for the base's own
sessions). The lock is held per chunk and never across a `yield`: generators are driven from
a small thread pool, and a suspended holder would block every other session. Each session
keeps its own KV caches and random generator, so interleaved sessions produce exactly what
each would alone. A switch costs a walk over the LoRA layers (~ms), once per chunk at most.

Sampling follows the checkpoint's generation_config.json (temperature, top-k; sesame ships 0.9
and 50 for both levels); `options` (`do_sample`, `temperature`, `top_k`, `seed`) override it, a
LoRA voice's options over its base's. Utterance length is bounded (`max_audio_s`, and
`1 s + audio_s_per_char` per character) because a model that never samples the end-of-audio
frame would otherwise talk forever.

Threads: on CPU the base class sets `torch.set_num_threads(engine_threads)` before loading
(process-wide, the same worker-wide value for every torch family): torch's default of one thread
per core per synthesis oversubscribes the cores as soon as two sessions run.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from duplexd.audio.pcm import Float32Array, Int16Array
from duplexd.errors import FailedPrecondition, InvalidArgument, ModelLoadError
from duplexd.tts.adapters.base import TTSAdapter
from duplexd.tts.catalog import ModelMeta

__all__ = ["CsmAdapter", "CsmLoraVoice"]

_DEFAULTS: dict[str, Any] = {
    "first_chunk_frames": 2,  # 160 ms: the first audio leaves after two frames
    "frames_per_chunk": 6,  # 480 ms per chunk afterwards: fewer decoder re-runs, lock switches
    "max_audio_s": 20.0,
    "audio_s_per_char": 0.15,  # ~2x a normal speaking rate; the bound a silent EOS needs
    "dtype": "auto",  # float32 on CPU, bfloat16 on CUDA
}
_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class _Sampling:
    do_sample: bool
    temperature: float
    top_k: int

    @classmethod
    def of(cls, generation_config: Any, options: dict[str, Any]) -> _Sampling:
        """The checkpoint's generation settings, overridden by catalog options."""
        return cls(
            do_sample=bool(options.get("do_sample", generation_config.do_sample)),
            temperature=float(options.get("temperature", generation_config.temperature or 1.0)),
            top_k=int(options.get("top_k", generation_config.top_k or 0)),
        )


class CsmAdapter(TTSAdapter):
    """A resident CSM base model; LoRA voices attach to it (`attach_lora`)."""

    family = "csm"
    uses_torch: ClassVar[bool] = True
    engine_modules: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft")
    engine_extra: ClassVar[str] = "csm"

    _torch: Any = None
    _model: Any = None
    _processor: Any = None
    _peft: Any = None  # the PeftModel wrapping `_model` while any LoRA voice is attached

    def __init__(self, meta: ModelMeta, *, device: str = "cpu", threads: int = 1) -> None:
        super().__init__(meta, device=device, threads=threads)
        # Guards the model for one chunk at a time: the peft adapter selection, attach/detach.
        self._lock = threading.Lock()
        # What the LoRA layers are set to now (None: disabled); unknown after attach/detach.
        self._selected: str | None = None
        self._selection_known = False

    # -- lifecycle ---------------------------------------------------------------------

    def _load(self) -> None:
        import torch  # imported (or refused, naming the extra) by load() via engine_modules

        hf = _transformers()
        path = self.meta.weights_path()
        options = {**_DEFAULTS, **self.meta.options}
        dtype = _torch_dtype(str(options["dtype"]), self.device, self.meta.model_id)
        try:
            model = hf.CsmForConditionalGeneration.from_pretrained(path, dtype=dtype)
            processor = hf.AutoProcessor.from_pretrained(path)
        except Exception as exc:
            raise ModelLoadError(
                f"{path} is not a loadable CSM checkpoint: {exc}",
                hint=f"re-download it: `duplexctl models pull {self.meta.model_id}`",
            ) from exc
        codec_config = model.config.codec_config
        if not codec_config.use_causal_conv:
            raise ModelLoadError(f"{path}: streaming needs a causal Mimi codec (use_causal_conv)")
        self._model = model.to(self.device).eval()
        self._processor = processor
        self._torch = torch

    def _close(self) -> None:
        with self._lock:
            self._peft = None
            self._model = None
            self._processor = None  # the base class empties the CUDA cache after gc

    @property
    def sample_rate(self) -> int:
        if self._model is None:
            return self.meta.native_sr
        return int(self._model.config.codec_config.sampling_rate)

    # -- LoRA voices -------------------------------------------------------------------

    def attach_lora(self, meta: ModelMeta) -> CsmLoraVoice:
        """Load the LoRA voice `meta` into this base (adapter weights only) and return its
        handle. Refuses an adapter whose modules or shapes do not fit this base."""
        from peft import PeftModel

        if meta.base_model != self.meta.model_id:
            raise FailedPrecondition(
                f"LoRA voice {meta.model_id!r} belongs to base {meta.base_model!r}, "
                f"not {self.meta.model_id!r}"
            )
        if self._model is None:
            raise FailedPrecondition(f"base model {self.meta.model_id!r} is not loaded")
        path = meta.weights_path()  # missing: WeightsMissing naming `duplexctl models pull`
        name = meta.model_id
        with self._lock:  # also against another attach walking or changing the modules
            if self._peft is not None and name in self._peft.peft_config:
                raise FailedPrecondition(f"LoRA voice {name!r} is already attached")
            _check_fits(self._model, meta, path, self.meta.model_id)
            self._selection_known = False
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(
                        self._model, str(path), adapter_name=name, torch_device=self.device
                    )
                else:
                    self._peft.load_adapter(str(path), adapter_name=name, torch_device=self.device)
            except Exception as exc:
                if self._peft is None:  # peft injected its layers, then failed to fill them
                    _strip_lora_layers(self._model)
                self._drop_adapter(name)
                raise ModelLoadError(
                    f"cannot attach LoRA voice {name!r} from {path}: {exc}"
                ) from exc
            self._peft.eval()
            added = sum(
                p.numel() * p.element_size()
                for n, p in self._peft.named_parameters()
                if f".{name}." in n
            )
        return CsmLoraVoice(meta, base=self, memory_bytes=added)

    def _detach(self, name: str) -> None:
        """Delete one adapter; the base and the other adapters keep working."""
        with self._lock:
            self._selection_known = False
            self._drop_adapter(name)

    def _drop_adapter(self, name: str) -> None:
        """Under the lock. The last adapter unwraps the base entirely (peft's delete leaves
        empty LoRA layers behind), so a base without voices runs its plain modules again."""
        if self._peft is None or name not in self._peft.peft_config:
            return
        others = [other for other in self._peft.peft_config if other != name]
        if not others:
            self._peft.unload()
            self._peft = None
            return
        if name in self._peft.active_adapters:  # peft would warn that it picks another one
            self._peft.set_adapter(others[0], inference_mode=True)
        self._peft.delete_adapter(name)

    def attached(self) -> tuple[str, ...]:
        """The LoRA voices attached now."""
        with self._lock:
            return tuple(self._peft.peft_config) if self._peft is not None else ()

    def select(self, adapter: str | None) -> None:
        """Make `adapter` (None: the plain base) the active one now, as a turn on that voice
        would: what switching voices between turns costs (the bench times this)."""
        with self._lock:
            self._select(adapter)

    def _select(self, adapter: str | None) -> None:
        """Under the lock: make the LoRA layers compute `adapter` (None: the plain base)."""
        if self._peft is None:
            if adapter is not None:
                raise FailedPrecondition(f"LoRA voice {adapter!r} is no longer attached")
            return
        if self._selection_known and self._selected == adapter:
            return
        if adapter is None:
            self._peft.base_model.disable_adapter_layers()
        else:
            if adapter not in self._peft.peft_config:
                raise FailedPrecondition(f"LoRA voice {adapter!r} is no longer attached")
            self._peft.base_model.enable_adapter_layers()
            self._peft.set_adapter(adapter, inference_mode=True)
        self._selected, self._selection_known = adapter, True

    # -- generation --------------------------------------------------------------------

    def _generate(
        self, text: str, voice: str | None, language: str | None
    ) -> Iterator[Float32Array | Int16Array]:
        return self._stream(text, voice, adapter=None, options=self.meta.options)

    def _stream(
        self, text: str, voice: str | None, *, adapter: str | None, options: dict[str, Any]
    ) -> Iterator[Float32Array]:
        """Yield audio chunks of `text` spoken as `voice` with `adapter` (None: the base)."""
        if self._model is None:
            raise FailedPrecondition(f"model {self.meta.model_id!r} is not loaded")
        opts = {**_DEFAULTS, **options}
        speaker = voice or "0"
        if not speaker.isdigit():
            raise InvalidArgument(f'CSM voices are speaker ids ("0", "1", ...), not {speaker!r}')
        first, per_chunk = int(opts["first_chunk_frames"]), int(opts["frames_per_chunk"])
        if first < 1 or per_chunk < 1:
            raise InvalidArgument(f"{self.meta.model_id}: frames per chunk must be >= 1")
        with self._lock:  # the fast tokenizer's padding state is not safe to share
            prompt = self._prompt(text, speaker)
        utterance = _Utterance(self, prompt, opts)
        budget_s = min(
            float(opts["max_audio_s"]), 1.0 + float(opts["audio_s_per_char"]) * len(text)
        )
        budget = max(1, math.ceil(budget_s * utterance.frame_rate))
        produced = 0
        while produced < budget and not utterance.finished:
            want = min(first if produced == 0 else per_chunk, budget - produced)
            with self._lock, self._torch.inference_mode():
                self._select(adapter)
                codes = utterance.frames(want)
                audio = utterance.decode(codes) if codes is not None else None
            if audio is None:
                break
            produced += int(codes.shape[-1])
            yield audio

    def _prompt(self, text: str, speaker: str) -> Any:
        conversation = [{"role": speaker, "content": [{"type": "text", "text": text}]}]
        inputs = self._processor.apply_chat_template(conversation, tokenize=True, return_dict=True)
        return inputs["input_ids"].to(self.device)


class CsmLoraVoice(TTSAdapter):
    """A LoRA voice attached to a resident `CsmAdapter`: the handle sessions lease.

    It owns no weights besides its adapter; generation runs the base's model with this
    adapter selected, and `close()` deletes only this adapter from the base.
    """

    family = "csm"
    uses_torch: ClassVar[bool] = True

    def __init__(self, meta: ModelMeta, *, base: CsmAdapter, memory_bytes: int) -> None:
        super().__init__(meta, device=base.device, threads=base.threads)
        self.base = base
        self._memory_bytes = memory_bytes  # the adapter's parameters: all this voice adds
        self._loaded = True
        self._options = {**base.meta.options, **meta.options}

    def _load(self) -> None:
        raise FailedPrecondition(
            f"LoRA voice {self.meta.model_id!r} is attached to its base, not loaded on its own"
        )

    @property
    def sample_rate(self) -> int:
        return self.base.sample_rate

    def _generate(
        self, text: str, voice: str | None, language: str | None
    ) -> Iterator[Float32Array | Int16Array]:
        return self.base._stream(
            text,
            voice or self.base.meta.default_voice,
            adapter=self.meta.model_id,
            options=self._options,
        )

    def _close(self) -> None:
        self.base._detach(self.meta.model_id)


class _Utterance:
    """One utterance's generation state: KV caches, the last frame, its random generator.

    Nothing here is shared between sessions, which is what lets chunks of different sessions
    interleave on one model.
    """

    def __init__(self, owner: CsmAdapter, input_ids: Any, opts: dict[str, Any]) -> None:
        import torch

        model = owner._model
        self._torch = torch
        self._model = model
        self._device = owner.device
        self._input_ids: Any = input_ids  # the text prompt until the prefill consumed it
        self._cache = _transformers().DynamicCache()
        self._last_frame: Any = None
        self._num_codebooks = int(model.config.num_codebooks)
        self._eos = int(model.config.codebook_eos_token_id)
        self._backbone = _Sampling.of(model.generation_config, opts)
        self._depth = _Sampling.of(model.depth_decoder.generation_config, opts)
        seed = opts.get("seed")
        if seed is None:  # a fresh voice per utterance, reproducible under torch.manual_seed
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self._rng = torch.Generator(device=owner.device).manual_seed(int(seed))
        self._codec = _MimiStream(model.codec_model)
        self.frame_rate = float(model.config.codec_config.frame_rate)
        self.finished = False

    def frames(self, n: int) -> Any:
        """Up to `n` new frames as codes (1, num_codebooks, frames), or None at the end."""
        frames = []
        for _ in range(n):
            frame = self._next_frame()
            # the end-of-audio frame, as generate() detects it (all but the last codebook)
            if bool((frame[0, :-1] == self._eos).all()):
                self.finished = True
                break
            frames.append(frame)
            self._last_frame = frame
        if not frames:
            return None
        return self._torch.stack(frames, dim=-1)

    def decode(self, codes: Any) -> Float32Array:
        audio = self._codec.decode(codes)
        return np.ascontiguousarray(audio.float().cpu().numpy(), dtype=np.float32)

    def _next_frame(self) -> Any:
        """Backbone step (codebook 0), then the depth decoder (codebooks 1..n-1): (1, n)."""
        if self._input_ids is not None:
            step_input, self._input_ids = self._input_ids, None  # prefill the text prompt
        else:
            step_input = self._last_frame[:, None, :]
        out = self._model(
            input_ids=step_input,
            past_key_values=self._cache,
            use_cache=True,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        first = self._pick(out.logits[:, -1, :], self._backbone)
        hidden = out.hidden_states[-1][:, -1, :]
        return self._depth_codes(first, hidden)

    def _depth_codes(self, first: Any, backbone_hidden: Any) -> Any:
        torch = self._torch
        depth = self._model.depth_decoder
        cache = _transformers().DynamicCache()
        # position 0 carries the backbone's hidden state, position 1 codebook 0
        step_ids = torch.stack([torch.zeros_like(first), first], dim=1)
        position = torch.arange(2, device=self._device)
        codes = [first]
        for index in range(1, self._num_codebooks):
            out = depth(
                input_ids=step_ids,
                backbone_last_hidden_state=backbone_hidden if index == 1 else None,
                past_key_values=cache,
                use_cache=True,
                cache_position=position,
                logits_to_keep=1,
            )
            code = self._pick(out.logits[:, -1, :], self._depth)
            codes.append(code)
            step_ids, position = code[:, None], position[-1:] + 1
        return torch.stack(codes, dim=1)

    def _pick(self, logits: Any, sampling: _Sampling) -> Any:
        """Greedy, or temperature + top-k sampling as generate()'s warpers do it: (batch,)."""
        torch = self._torch
        logits = logits.float()
        if not sampling.do_sample:
            return logits.argmax(dim=-1)
        logits = logits / sampling.temperature
        if 0 < sampling.top_k < logits.shape[-1]:
            kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1, None]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=self._rng).squeeze(1)


class _MimiStream:
    """Decodes Mimi codes chunk by chunk into the same samples as one whole decode.

    Per chunk: quantizer embeddings (per frame); the upsampling transposed convolution over the
    chunk plus the previous frames it reaches back to; the decoder transformer on a KV cache;
    the SEANet decoder over the chunk plus `_conv_context` earlier positions, keeping only the
    new samples. Mimi's convolutions are causal, so those contexts make the cut invisible.
    """

    def __init__(self, codec: Any) -> None:
        self._codec = codec
        self._cache = (
            _transformers().DynamicCache()
        )  # no config: full causal attention, as decode() computes
        upsample = codec.upsample
        if upsample is None:
            self._up_stride, self._up_context = 1, 0
        else:
            kernel, stride = upsample.conv.kernel_size[0], upsample.conv.stride[0]
            self._up_stride, self._up_context = stride, math.ceil(kernel / stride) - 1
        self._hop = int(np.prod(codec.config.upsampling_ratios))
        self._conv_context = _receptive_field(codec.decoder)
        self._prev_embeddings: Any = None
        self._prev_hidden: Any = None

    def decode(self, codes: Any) -> Any:
        """codes (1, num_codebooks, frames) -> the new mono samples (1-D tensor)."""
        codec = self._codec
        embeddings = codec.quantizer.decode(codes)
        if codec.upsample is not None:
            joined = _cat(self._prev_embeddings, embeddings)
            upsampled = codec.upsample(joined)[..., -embeddings.shape[-1] * self._up_stride :]
            self._prev_embeddings = joined[..., joined.shape[-1] - self._up_context :]
        else:
            upsampled = embeddings
        hidden = codec.decoder_transformer(
            upsampled.transpose(1, 2), past_key_values=self._cache, use_cache=True, return_dict=True
        ).last_hidden_state.transpose(1, 2)
        joined = _cat(self._prev_hidden, hidden)
        audio = codec.decoder(joined)[..., -hidden.shape[-1] * self._hop :]
        self._prev_hidden = joined[..., max(joined.shape[-1] - self._conv_context, 0) :]
        return audio[0, 0]


def _cat(previous: Any, new: Any) -> Any:
    import torch

    if previous is None or previous.shape[-1] == 0:
        return new
    return torch.cat([previous, new], dim=-1)


def _receptive_field(decoder: Any) -> int:
    """How many earlier input positions the SEANet decoder's output reaches back to.

    Summed over every convolution (a residual block's shortcut counted too, so it errs long):
    a causal conv reaches (effective kernel - 1) steps back at its own rate, a transposed conv
    ceil(kernel / stride) - 1 inputs back; each is scaled back to the decoder's input rate.
    """
    mimi = _transformers().models.mimi.modeling_mimi
    reach, scale = 0.0, 1
    for module in decoder.modules():
        if isinstance(module, mimi.MimiConv1d):
            conv = module.conv
            reach += (conv.kernel_size[0] - 1) * conv.dilation[0] / scale
        elif isinstance(module, mimi.MimiConvTranspose1d):
            transposed = module.conv
            reach += (math.ceil(transposed.kernel_size[0] / transposed.stride[0]) - 1) / scale
            scale *= transposed.stride[0]
    return math.ceil(reach) + 1


def _check_fits(model: Any, meta: ModelMeta, path: Path, base_id: str) -> None:
    """Refuse an adapter trained for another base, with the modules and shapes that differ.

    Checked from the files before peft touches the model, because a half-applied adapter is
    hard to take back. Names alone prove nothing (a LoRA names its base as a hub id or a local
    path), so the test is the one that matters: every adapted module exists here, with the
    in/out sizes the adapter's matrices need.
    """
    from safetensors import safe_open

    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"{path} is not a PEFT adapter folder (no adapter_config.json)",
            hint=f"re-download it: `duplexctl models pull {meta.model_id}`",
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from exc
    trained_for = config.get("base_model_name_or_path") or "an unnamed base"
    if config.get("peft_type") != "LORA":
        raise ModelLoadError(
            f"{meta.model_id!r}: {config_file} is a {config.get('peft_type')} adapter, not LoRA"
        )
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(
            f"{path} has no adapter_model.safetensors",
            hint=f"re-download it: `duplexctl models pull {meta.model_id}`",
        )
    modules = dict(model.named_modules())
    problems: list[str] = []
    try:
        with safe_open(str(weights), framework="pt") as tensors:
            for key in tensors.keys():  # noqa: SIM118  # safe_open is not a mapping
                problem = _key_problem(key, tensors.get_slice(key).get_shape(), modules)
                if problem:
                    problems.append(problem)
    except Exception as exc:
        raise ModelLoadError(f"{weights} is not a readable safetensors file: {exc}") from exc
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelLoadError(
            f"LoRA voice {meta.model_id!r} does not fit base {base_id!r}: "
            f"{'; '.join(problems[:3])}{more}; it was trained for {trained_for}",
            hint="set `base_model:` in its catalog entry to the model it was trained for",
        )


def _key_problem(key: str, shape: list[int], modules: dict[str, Any]) -> str | None:
    """What is wrong with one adapter tensor on this base, or None."""
    name = key.removeprefix("base_model.model.")
    for marker, axis in ((".lora_A.", 1), (".lora_B.", 0)):
        if marker not in name:
            continue
        module_name = name.split(marker)[0]
        module = modules.get(module_name)
        if module is None:
            return f"no module {module_name}"
        layer = getattr(module, "base_layer", module)  # already wrapped by another adapter
        if not hasattr(layer, "in_features"):
            return None  # not a Linear: peft checks the other layer types itself
        size = layer.in_features if axis == 1 else layer.out_features
        if shape[axis] != size:
            side = "in" if axis == 1 else "out"
            return (
                f"{module_name} has {side}_features {size} here, "
                f"the adapter's {marker.strip('.')} needs {shape[axis]}"
            )
        return None
    return None


def _strip_lora_layers(model: Any) -> None:
    """Put each peft layer's wrapped module back in its place (what `unload()` does, for
    when the PeftModel that could do it was never returned)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    if hasattr(model, "peft_config"):  # as unload() does: peft marks the model it wraps
        del model.peft_config


def _transformers() -> Any:
    """transformers, imported on first use and typed loosely: its classes are untyped
    callables to strict mypy, and this module only hands their objects around."""
    import transformers

    return transformers


def _torch_dtype(name: str, device: str, model_id: str) -> Any:
    import torch

    if name not in _DTYPES:
        raise InvalidArgument(
            f"{model_id}: options.dtype {name!r} is not one of {', '.join(_DTYPES)}"
        )
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)
