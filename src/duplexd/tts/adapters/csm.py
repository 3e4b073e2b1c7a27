"""Sesame CSM (transformers' `CsmForConditionalGeneration` + Mimi), with PEFT LoRA voices.

Streaming. Audio is generated and decoded incrementally (`csm_stream.Utterance`, Mimi decoded
without seams by `csm_stream.MimiStream`): every chunk of frames (`first_chunk_frames`, then
`frames_per_chunk`) is decoded and yielded, so first audio does not wait for the utterance.

LoRA voices. A LoRA voice is its own catalog entry (`base_model: <this model>`); the Model
Manager attaches it to the resident base with `attach_lora`, which loads only the adapter into
the base (peft wraps the base's own modules in place on the first attach; no second copy) and
returns a `CsmLoraVoice` handle whose `close()` deletes just that adapter. An adapter that does
not fit this base is refused from its files before peft touches the model (`_check_fits`).
peft's active adapter is global state of the shared modules, so every chunk of every session
on this base runs under the base's lock with its own selection (an adapter, or adapters
disabled for the base's own sessions). The lock is held per chunk and never across a `yield`:
generators are driven from a small thread pool, and a suspended holder would block every other
session. Each session keeps its own KV caches and random generator, so interleaved sessions
produce exactly what each would alone. A switch costs a walk over the LoRA layers (~ms), once
per chunk at most.

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
from pathlib import Path
from typing import Any, ClassVar

from duplexd.audio.pcm import Float32Array, Int16Array
from duplexd.errors import FailedPrecondition, InvalidArgument, ModelLoadError
from duplexd.tts.adapters.base import TTSAdapter
from duplexd.tts.adapters.csm_stream import Utterance, transformers_lib
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

        hf = transformers_lib()
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
        utterance = Utterance(self._model, self.device, prompt, opts)
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


def _torch_dtype(name: str, device: str, model_id: str) -> Any:
    import torch

    if name not in _DTYPES:
        raise InvalidArgument(
            f"{model_id}: options.dtype {name!r} is not one of {', '.join(_DTYPES)}"
        )
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)
