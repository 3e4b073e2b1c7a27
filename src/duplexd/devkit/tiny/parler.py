"""A tiny randomly initialised Parler-TTS, written in the upstream `parler-tts-mini-v1` layout.

Runs in the Parler engine environment (`bash scripts/engine-env.sh parler`: parler-tts 0.2.3
pins transformers 4.46.1, which the main environment cannot take):

    .venvs/parler/bin/duplexd devkit tiny-model parler --out $DUPLEX_MODELS_DIR/parler-tts-mini-v1

The folder holds what `parler-tts/parler-tts-mini-v1` ships, so the worker loads it through the
same `ParlerTTSForConditionalGeneration.from_pretrained` + `AutoTokenizer` path as real weights:

    config.json                  ParlerTTSConfig (T5 text encoder, DAC codec, Parler decoder)
    generation_config.json       sampling defaults (decoder start/pad/eos ids, do_sample)
    model.safetensors            all three sub-models' weights
    preprocessor_config.json     the EncodecFeatureExtractor settings (44.1 kHz, mono)
    spiece.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json
                                 a T5 SentencePiece tokenizer (description and prompt)

What is shrunk, and why:

- The T5 encoder (flan-t5-large upstream) and the Parler decoder (24 layers of 1024 upstream) are
  2 layers of width 32. The decoder keeps upstream's token layout: 9 codebooks of 1024 codes,
  vocab 1088 with pad/eos 1024 and bos 1025, so the delay pattern and the codec see real ids.
- The DAC codec keeps its upstream shape (44.1 kHz, 9 codebooks, latent 1024): parler-tts
  builds it from `DACConfig`, which exposes nothing smaller. It is about 77 M parameters, fine on
  a CPU.
- The tokenizer is a SentencePiece unigram model trained here on a few sentences (upstream:
  flan-t5's 32k pieces), with T5's special ids (pad 0, eos 1, unk 2).
- Random decoder weights sample the ids 1025-1087 (bos and unused ids) as often as codes, and
  the codec cannot decode those. Serve the tiny model with the catalog option
  `suppress_non_audio_tokens: true` (a trained model never samples them).

Everything is seeded: one seed, one model.
"""

from __future__ import annotations

import importlib
import io
from pathlib import Path
from typing import Any

__all__ = ["CODEBOOKS", "SAMPLING_RATE", "build"]

SAMPLING_RATE = 44100
CODEBOOKS = 9
_CODES = 1024  # codebook size; the decoder's ids above it are pad/eos (1024) and bos (1025)
_VOCAB = 1088  # upstream's decoder vocab (codes + special ids, padded to a multiple of 64)

# what the tokenizer is trained on: descriptions and the kind of text a worker speaks
_CORPUS = (
    "A calm female speaker delivers her words slowly, in a quiet room with very clear audio.",
    "A male speaker with a deep voice speaks at a moderate pace with slightly expressive delivery.",
    "A bright, energetic female voice talks quickly and cheerfully, very close to the microphone.",
    "Hello there, how are you doing today? The quick brown fox jumps over the lazy dog.",
    "Warming up. Testing one two three, four five six. Is anybody listening, or not?",
)


def build(out: Path, base: Path | None, seed: int) -> Path:
    """Write the tiny model to `out` (an existing empty folder) and return `out`.

    `base` is unused: Parler-TTS has no base model (the signature is the tiny-model builders').
    """
    del base
    import torch
    from parler_tts import (
        DACConfig,
        ParlerTTSConfig,
        ParlerTTSDecoderConfig,
        ParlerTTSForConditionalGeneration,
    )

    # untyped libraries, typed loosely (strict mypy sees their classes as untyped callables)
    spm: Any = importlib.import_module("sentencepiece")
    hf: Any = importlib.import_module("transformers")

    torch.manual_seed(seed)

    model_file = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 8),
        model_writer=model_file,
        model_type="unigram",
        vocab_size=200,
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        seed_sentencepiece_size=1000,
        minloglevel=2,
        num_threads=1,
    )
    spiece = out / "spiece.model"
    spiece.write_bytes(model_file.getvalue())
    tokenizer = hf.T5TokenizerFast(vocab_file=str(spiece), extra_ids=0)
    tokenizer.save_pretrained(out)

    text_config = hf.T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    audio_config = DACConfig(
        num_codebooks=CODEBOOKS,
        model_bitrate=8,
        codebook_size=_CODES,
        latent_dim=1024,
        frame_rate=86,
        sampling_rate=SAMPLING_RATE,
    )
    decoder_config = ParlerTTSDecoderConfig(
        vocab_size=_VOCAB,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_codebooks=CODEBOOKS,
        pad_token_id=_CODES,
        eos_token_id=_CODES,
        bos_token_id=_CODES + 1,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    config = ParlerTTSConfig.from_sub_models_config(
        text_config,
        audio_config,
        decoder_config,
        vocab_size=len(tokenizer),
        decoder_start_token_id=_CODES + 1,
        pad_token_id=_CODES,
    )
    model = ParlerTTSForConditionalGeneration(config).eval()
    # upstream's generation_config.json: sampled, bounded at 2580 steps (30 s at 86 frames/s)
    generation = model.generation_config
    generation.do_sample = True
    generation.max_length = 2580
    generation.decoder_start_token_id = _CODES + 1
    generation.pad_token_id = _CODES
    generation.eos_token_id = _CODES
    generation.bos_token_id = _CODES + 1
    model.save_pretrained(out, safe_serialization=True)
    hf.EncodecFeatureExtractor(
        feature_size=1, sampling_rate=SAMPLING_RATE, padding_value=0.0, return_attention_mask=True
    ).save_pretrained(out)
    return out
