"""A tiny randomly initialised XTTS-v2, written in the upstream release layout.

The folder holds the four files of the `coqui/XTTS-v2` release that inference reads, as
`duplexctl models pull xtts-v2-en` puts them under the models directory, so the worker loads it
through the same code path as the real weights:

    config.json        XttsConfig (coqpit JSON)
    model.pth          {"model": state_dict}, as coqui's trainer saves checkpoints
    vocab.json         a `tokenizers` JSON file that VoiceBpeTokenizer reads
    speakers_xtts.pth  {name: {"gpt_cond_latent", "speaker_embedding"}}

What is shrunk, and why:

- The GPT is 2 layers of width 64 with 66 audio tokens (64 codes + start + stop). The HiFi-GAN
  decoder and the speaker encoder keep their upstream sizes: XttsArgs does not expose them, and
  they are the parts whose shapes the adapter relies on (the speaker encoder always projects to
  512, so `d_vector_dim` stays 512 or zero-shot voices from reference WAVs could not be decoded).
- The vocab is character-level: one token per letter instead of upstream's BPE merges, with the
  special tokens VoiceBpeTokenizer writes into every text ([STOP], [UNK], [SPACE], [START] and
  one ``[<lang>]`` per language).
- A random GPT samples its stop token at random, so a unit could end after one token or
  never. The stop logit is pinned very low instead, and every text unit runs to the
  `gpt_max_audio_tokens` cap: about 1.25 s of 24 kHz audio, the same every time.
- The built-in speakers carry the names of the first upstream speakers, so a voice name that
  works against the real weights works against the tiny ones too.

Everything is seeded: one seed, one model.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

__all__ = ["GPT_MAX_AUDIO_TOKENS", "SPEAKERS", "build"]

# GPT generates at most this minus 3 tokens per text unit; one token is 1024 samples at
# 22.05 kHz (≈ 46 ms of output audio), so 30 caps a unit at 27 tokens ≈ 1.25 s.
GPT_MAX_AUDIO_TOKENS = 30
SPEAKERS = ("Claribel Dervla", "Daisy Studious")

_SPECIAL = ["[STOP]", "[UNK]", "[SPACE]", "[START]"]
# What multilingual_cleaners leaves in a text: lower-case letters (with the accents of the
# Latin-script languages XTTS speaks), digits it did not expand, and punctuation.
_CHARS = (
    string.ascii_lowercase
    + string.digits
    + ".,!?'\"-:;()"
    + "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœąćęłńśźżčďěňřšťůžğışőű"
)


def build(out: Path, base: Path | None, seed: int) -> Path:
    """Write the tiny model to `out` (an existing empty folder) and return `out`.

    `base` is unused: XTTS has no base model (the signature is the tiny-model builders' one).
    """
    del base
    import torch
    from TTS.tts.configs.xtts_config import XttsArgs, XttsConfig
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer
    from TTS.tts.models.xtts import Xtts

    config = XttsConfig()
    vocab_path = out / "vocab.json"
    vocab_size = _write_vocab(vocab_path, config.languages)
    config.model_args = XttsArgs(
        gpt_layers=2,
        gpt_n_model_channels=64,
        gpt_n_heads=4,
        gpt_max_audio_tokens=GPT_MAX_AUDIO_TOKENS,
        gpt_num_audio_tokens=66,
        gpt_start_audio_token=64,
        gpt_stop_audio_token=65,
        gpt_number_text_tokens=vocab_size,
        gpt_use_perceiver_resampler=True,  # XTTS-v2 (v1 had a prompt embedding instead)
        decoder_input_dim=64,  # the decoder reads GPT latents, so it is the GPT width
        d_vector_dim=512,  # the speaker encoder's fixed output size
    )
    config.save_json(str(out / "config.json"))

    torch.manual_seed(seed)
    model = Xtts(config)
    model.tokenizer = VoiceBpeTokenizer(vocab_file=str(vocab_path))
    model.init_models()  # rebuilt now that the tokenizer fixes the text-token ids
    with torch.no_grad():  # see the module docstring: every unit runs to the token cap
        model.gpt.mel_head.bias[config.model_args.gpt_stop_audio_token] = -1e4
    # before init_gpt_for_inference: upstream checkpoints hold only the training modules
    torch.save({"model": model.state_dict()}, out / "model.pth")

    width = config.model_args.gpt_n_model_channels
    generator = torch.Generator().manual_seed(seed + 1)
    speakers: dict[str, dict[str, Any]] = {
        name: {
            # the perceiver resampler's 32 latents of GPT width; an L2-normalised d-vector
            "gpt_cond_latent": torch.randn(1, 32, width, generator=generator),
            "speaker_embedding": torch.nn.functional.normalize(
                torch.randn(1, 512, 1, generator=generator), dim=1
            ),
        }
        for name in SPEAKERS
    }
    torch.save(speakers, out / "speakers_xtts.pth")
    return out


def _write_vocab(path: Path, languages: list[str]) -> int:
    """A character-level `tokenizers` vocab; returns how many ids it has."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = _SPECIAL + [f"[{lang}]" for lang in languages]
    vocab = {token: i for i, token in enumerate(specials + list(dict.fromkeys(_CHARS)))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))  # noqa: S106
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    # matched before the character split, so "[en]" and "[SPACE]" stay one token each
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(path))
    return len(vocab)
