"""CSM's streaming core: one utterance generated a few frames at a time, and Mimi decoded
chunk by chunk into the same samples as one whole decode.

`generate()` only returns audio once the whole utterance is done, so `Utterance` runs the same
two-level loop itself: per 80 ms frame the backbone (a Llama) samples codebook 0 from its KV
cache and the depth decoder samples the other codebooks. With greedy settings the codes equal
`generate(do_sample=False, depth_decoder_do_sample=False)`.

Decoding chunks without clicks. Mimi is causal, so the audio of frame t depends only on
frames <= t; decoding each chunk on its own would still restart the decoder's left context
(its transformer and convolutions) at every boundary. `MimiStream` keeps it instead: the
decoder transformer runs incrementally on a KV cache (full causal attention, as
`MimiModel.decode` computes it without flash attention), and the upsampling and SEANet
convolutions re-run over just enough previous positions to cover their receptive field, of
which only the new samples are kept. The concatenated chunks equal one `codec_model.decode` of
all codes (up to float rounding): no seams at chunk boundaries.

Nothing here is shared between utterances, which is what lets chunks of different sessions
interleave on one model (`duplexd.tts.adapters.csm` holds the model's lock around each chunk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from duplexd.audio.pcm import Float32Array

__all__ = ["MimiStream", "Sampling", "Utterance", "transformers_lib"]


@dataclass(frozen=True)
class Sampling:
    do_sample: bool
    temperature: float
    top_k: int

    @classmethod
    def of(cls, generation_config: Any, options: dict[str, Any]) -> Sampling:
        """The checkpoint's generation settings, overridden by catalog options."""
        return cls(
            do_sample=bool(options.get("do_sample", generation_config.do_sample)),
            temperature=float(options.get("temperature", generation_config.temperature or 1.0)),
            top_k=int(options.get("top_k", generation_config.top_k or 0)),
        )


class Utterance:
    """One utterance's generation state: KV caches, the last frame, its random generator.

    Nothing here is shared between sessions, which is what lets chunks of different sessions
    interleave on one model.
    """

    def __init__(self, model: Any, device: str, input_ids: Any, opts: dict[str, Any]) -> None:
        import torch

        self._torch = torch
        self._model = model
        self._device = device
        self._input_ids: Any = input_ids  # the text prompt until the prefill consumed it
        self._cache = transformers_lib().DynamicCache()
        self._last_frame: Any = None
        self._num_codebooks = int(model.config.num_codebooks)
        self._eos = int(model.config.codebook_eos_token_id)
        self._backbone = Sampling.of(model.generation_config, opts)
        self._depth = Sampling.of(model.depth_decoder.generation_config, opts)
        seed = opts.get("seed")
        if seed is None:  # a fresh voice per utterance, reproducible under torch.manual_seed
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self._rng = torch.Generator(device=device).manual_seed(int(seed))
        self._codec = MimiStream(model.codec_model)
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
        cache = transformers_lib().DynamicCache()
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

    def _pick(self, logits: Any, sampling: Sampling) -> Any:
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


class MimiStream:
    """Decodes Mimi codes chunk by chunk into the same samples as one whole decode.

    Per chunk: quantizer embeddings (per frame); the upsampling transposed convolution over the
    chunk plus the previous frames it reaches back to; the decoder transformer on a KV cache;
    the SEANet decoder over the chunk plus `_conv_context` earlier positions, keeping only the
    new samples. Mimi's convolutions are causal, so those contexts make the cut invisible.
    """

    def __init__(self, codec: Any) -> None:
        self._codec = codec
        self._cache = (
            transformers_lib().DynamicCache()
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
    mimi = transformers_lib().models.mimi.modeling_mimi
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


def transformers_lib() -> Any:
    """transformers, imported on first use and typed loosely: its classes are untyped
    callables to strict mypy, and this module only hands their objects around."""
    import transformers

    return transformers
