"""A tiny randomly initialised Spark-TTS, written in the upstream release layout.

The folder holds what `SparkAudio/Spark-TTS-0.5B` ships and what `duplexctl models pull
spark-tts-0.5b` puts under the models directory, so the worker loads it through the same code
path (spark-tts-lib's `SparkTTS`) as the real weights:

    config.yaml                  top-level audio settings (sample_rate, ref_segment_duration, …)
    LLM/                         a Qwen2 causal LM + its Qwen2 tokenizer (transformers layout)
    BiCodec/config.yaml          the codec's architecture (`audio_tokenizer:`)
    BiCodec/model.safetensors    its weights
    wav2vec2-large-xlsr-53/      a Wav2Vec2Model + feature extractor (transformers layout)

What is shrunk, and why:

- The LLM is a 2-layer Qwen2 of width 64. Its tokenizer is a byte-level BPE trained here on one
  line (upstream: Qwen2.5's), plus exactly the tokens Spark's prompts and outputs use: the task
  and control tokens as special tokens, and the 4096 ``<|bicodec_global_i|>`` and 8192
  ``<|bicodec_semantic_i|>`` tokens as *ordinary* added tokens. They must not be special:
  Spark decodes the generated ids with ``skip_special_tokens=True`` and then reads the codec
  tokens back out of the text.
- The tokenizer is saved as `Qwen2TokenizerFast` (the real class): a generic fast tokenizer
  returns ``token_type_ids``, which Qwen2's ``generate`` rejects.
- BiCodec keeps its real token spaces (8192 semantic codes, 32 global tokens from 4096 FSQ
  levels, 50 tokens per second at 16 kHz) with narrow layers. Its speaker encoder is
  upstream's fixed-size ECAPA-TDNN (not configurable), which is most of the 26 MB on disk.
- wav2vec2 is 16 layers of width 32: Spark averages hidden states 11, 14 and 16, so it needs
  at least 16 layers; the width is what BiCodec's encoder reads.
- A random LM samples its end token now and then, which would make a text unit's length (even
  whether it has any speech tokens at all) a matter of luck. The LM's generation_config
  suppresses that token, so every unit runs to its ``max_new_tokens`` (`MAX_NEW_TOKENS`, about
  2.6 s of audio), which the adapter reads as the model's own bound.

Everything is seeded: one seed, one model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["MAX_NEW_TOKENS", "build"]

# Tokens one text unit may generate. The random LM spends about a third of them on global
# tokens, so 200 leave ~130 semantic tokens (2.6 s at 50 per second) and, for a control voice
# (whose speaker tokens the LM writes), more than the 32 the codec needs: at least 48 in 80
# sampled units. So both kinds of voice, cloned and control, speak with this model.
MAX_NEW_TOKENS = 200

_SAMPLE_RATE = 16000
_W2V_DIM = 32  # wav2vec2 width == BiCodec encoder input == postnet output (upstream: 1024)
_TOP: dict[str, Any] = {
    "sample_rate": _SAMPLE_RATE,
    "highpass_cutoff_freq": 40,
    "segment_duration": 2.4,
    "max_val_duration": 12,
    "latent_hop_length": 320,
    "ref_segment_duration": 6,
    "volume_normalize": True,
}
_VOCOS = {"vocos_dim": 32, "vocos_intermediate_dim": 64, "vocos_num_layers": 2}
_CODEC: dict[str, Any] = {
    "mel_params": {
        "sample_rate": _SAMPLE_RATE,
        "n_fft": 1024,
        "win_length": 640,
        "hop_length": 320,
        "mel_fmin": 10,
        "mel_fmax": None,
        "num_mels": 128,
    },
    "encoder": {"input_channels": _W2V_DIM, **_VOCOS, "out_channels": 32, "sample_ratios": [1, 1]},
    # 8·5·4·2 = 320× upsampling: one semantic token per 20 ms at 16 kHz, as upstream
    "decoder": {
        "input_channel": 32,
        "channels": 64,
        "rates": [8, 5, 4, 2],
        "kernel_sizes": [16, 11, 8, 4],
    },
    "quantizer": {
        "input_dim": 32,
        "codebook_size": 8192,
        "codebook_dim": 8,
        "commitment": 0.25,
        "codebook_loss_weight": 2.0,
        "use_l2_normlize": True,
        "threshold_ema_dead_code": 0.2,
    },
    "speaker_encoder": {
        "input_dim": 128,
        "out_dim": 32,
        "latent_dim": 32,
        "token_num": 32,
        "fsq_levels": [4, 4, 4, 4, 4, 4],
        "fsq_num_quantizers": 1,
    },
    "prenet": {
        "input_channels": 32,
        **_VOCOS,
        "out_channels": 32,
        "condition_dim": 32,
        "sample_ratios": [1, 1],
        "use_tanh_at_final": False,
    },
    "postnet": {
        "input_channels": 32,
        **_VOCOS,
        "out_channels": _W2V_DIM,
        "use_tanh_at_final": False,
    },
}
_CONTENT_TOKENS = [
    "<|start_content|>",
    "<|end_content|>",
    "<|start_global_token|>",
    "<|end_global_token|>",
    "<|start_semantic_token|>",
    "<|end_semantic_token|>",
    "<|start_style_label|>",
    "<|end_style_label|>",
]


def build(out: Path, base: Path | None, seed: int) -> Path:
    """Write the tiny model to `out` (an existing empty folder) and return `out`.

    `base` is unused: Spark-TTS has no base model (the signature is the tiny-model builders').
    """
    del base
    import torch
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    OmegaConf.save(OmegaConf.create(_TOP), out / "config.yaml")
    (out / "BiCodec").mkdir()
    OmegaConf.save(OmegaConf.create({"audio_tokenizer": _CODEC}), out / "BiCodec" / "config.yaml")
    _write_codec(out / "BiCodec" / "model.safetensors")
    _write_wav2vec2(out / "wav2vec2-large-xlsr-53")
    _write_llm(out / "LLM")
    return out


def _write_codec(path: Path) -> None:
    from safetensors.torch import save_file
    from spark_tts_lib.models.bicodec import BiCodec
    from spark_tts_lib.modules.encoder_decoder.feat_decoder import Decoder
    from spark_tts_lib.modules.encoder_decoder.feat_encoder import Encoder
    from spark_tts_lib.modules.encoder_decoder.wave_generator import WaveGenerator
    from spark_tts_lib.modules.speaker.speaker_encoder import SpeakerEncoder
    from spark_tts_lib.modules.vq.factorized_vector_quantize import FactorizedVectorQuantize

    codec = BiCodec(
        mel_params=_CODEC["mel_params"],
        encoder=Encoder(**_CODEC["encoder"]),
        decoder=WaveGenerator(**_CODEC["decoder"]),
        quantizer=FactorizedVectorQuantize(**_CODEC["quantizer"]),
        speaker_encoder=SpeakerEncoder(**_CODEC["speaker_encoder"]),
        prenet=Decoder(**_CODEC["prenet"]),
        postnet=Decoder(**_CODEC["postnet"]),
    )
    # as upstream ships it: the training-time state dict, weight norm not yet removed
    save_file({k: v.contiguous() for k, v in codec.state_dict().items()}, str(path))


def _write_wav2vec2(folder: Path) -> None:
    hf = _hf()
    config = hf.Wav2Vec2Config(
        hidden_size=_W2V_DIM,
        num_hidden_layers=16,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        # xlsr-53's layout: pre-norm transformer, layer-normed feature extractor
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
    )
    hf.Wav2Vec2Model(config).save_pretrained(folder)
    hf.Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=_SAMPLE_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    ).save_pretrained(folder)


def _write_llm(folder: Path) -> None:
    from spark_tts_lib.utils.token_parser import GENDER_MAP, LEVELS_MAP, TASK_TOKEN_MAP
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = _hf()

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))  # noqa: S106
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        ["hello world this is a tiny spark tts test"],
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<unk>", "<|endoftext|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any text, any script
            show_progress=False,
        ),
    )
    tokenizer = hf.Qwen2TokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",  # noqa: S106
        eos_token="<|im_end|>",  # noqa: S106
        pad_token="<|endoftext|>",  # noqa: S106
    )
    specials = [
        *TASK_TOKEN_MAP.values(),
        *_CONTENT_TOKENS,
        *(f"<|gender_{i}|>" for i in sorted(set(GENDER_MAP.values()))),
        *(f"<|pitch_label_{i}|>" for i in sorted(set(LEVELS_MAP.values()))),
        *(f"<|speed_label_{i}|>" for i in sorted(set(LEVELS_MAP.values()))),
    ]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    levels = math.prod(_CODEC["speaker_encoder"]["fsq_levels"])  # FSQ code space
    tokenizer.add_tokens(
        [f"<|bicodec_global_{i}|>" for i in range(levels)]
        + [f"<|bicodec_semantic_{i}|>" for i in range(_CODEC["quantizer"]["codebook_size"])]
    )
    tokenizer.save_pretrained(folder)

    model = hf.Qwen2ForCausalLM(
        hf.Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
        )
    )
    model.generation_config.max_new_tokens = MAX_NEW_TOKENS
    # never sample the end token, so every unit is the same length (and never empty)
    model.generation_config.suppress_tokens = [tokenizer.eos_token_id]
    model.save_pretrained(folder)


def _hf() -> Any:
    """transformers, typed loosely: its classes are untyped callables to strict mypy."""
    import transformers

    return transformers
