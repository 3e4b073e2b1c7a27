"""Tiny Sesame CSM (+ PEFT LoRA voices) in the on-disk layout of `sesame/csm-1b`.

`build_base` writes what `huggingface-cli download sesame/csm-1b` leaves: `config.json`,
`generation_config.json`, `model.safetensors` and the processor (tokenizer files, chat
template, `preprocessor_config.json`), so `CsmForConditionalGeneration.from_pretrained(dir)` and
`AutoProcessor.from_pretrained(dir)` load it offline through the real code. Only the sizes
shrink: a 2-layer 64-wide backbone and depth decoder, 4 codebooks of 64 codes, a tiny Mimi.

The real tokenizer is Llama 3's (128k BPE tokens), which cannot be downloaded here; a
character-level WordLevel tokenizer with the same special tokens (`<|begin_of_text|>`,
`<|end_of_text|>`, `<|AUDIO|>`, `<|audio_eos|>`) and the same chat template stands in for it, so
prompts are built exactly as for the real model: `<|begin_of_text|>[0]Hello.<|end_of_text|>`.

`build_lora` writes a PEFT LoRA (`adapter_config.json` + `adapter_model.safetensors`, what
`PeftModel.save_pretrained` and Unsloth's CSM notebooks write) for a base written by
`build_base`, with `base_model_name_or_path` naming that base folder. Its B matrices are random
rather than zero (a freshly initialised LoRA is a no-op), so different seeds give voices that
sound different from each other and from the base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from duplexd.errors import InvalidArgument

__all__ = ["build_base", "build_lora"]

# special tokens of the real (Llama 3) tokenizer, placed after the characters
BOS, EOS, AUDIO, AUDIO_EOS = "<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>"
UNK = "<unk>"
_CHARS = [chr(c) for c in range(32, 127)]  # printable ASCII; anything else reads as <unk>
_SPECIALS = [BOS, EOS, AUDIO, AUDIO_EOS]
_TEXT_VOCAB = 1 + len(_CHARS) + len(_SPECIALS)
_NUM_CODEBOOKS = 4
_CODEBOOK_SIZE = 64

# The chat template `sesame/csm-1b` ships (transformers' convert_csm.py): each turn is
# `<bos>[speaker]text<eos>`, followed by `<|AUDIO|><|audio_eos|>` when it carries audio context.
CHAT_TEMPLATE = """
{%- for message in messages %}
    {%- if not message['role'] is string or not message['role'].isdigit() %}
        {{- raise_exception("The role must be an integer or a stringified integer (e.g. '0') designating the speaker id") }}
    {%- endif %}
    {%- set content = message['content'] %}
    {%- if content is not iterable or content is string %}
        {{- raise_exception("The content must be a list") }}
    {%- endif %}
    {%- set content_types = content | map(attribute='type') | list %}
    {%- if loop.last %}
        {%- if 'text' not in content_types %}
            {{- raise_exception("The last message must include one item of type 'text'") }}
        {%- elif (content_types | select('equalto', 'text') | list | length > 1) or (content_types | select('equalto', 'audio') | list | length > 1) %}
            {{- raise_exception("At most two items are allowed in the last message: one 'text' and one 'audio'") }}
        {%- endif %}
    {%- else %}
        {%- if content_types | select('equalto', 'text') | list | length != 1
              or content_types | select('equalto', 'audio') | list | length != 1 %}
            {{- raise_exception("Each message (except the last) must contain exactly one 'text' and one 'audio' item") }}
        {%- elif content_types | reject('in', ['text', 'audio']) | list | length > 0 %}
            {{- raise_exception("Only 'text' and 'audio' types are allowed in content") }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {{- bos_token }}
    {{- '[' + message['role'] + ']' }}
    {{- message['content'][0]['text'] }}
    {{- eos_token }}
    {%- if message['content']|length > 1 %}
        {{- '<|AUDIO|><|audio_eos|>' }}
    {%- endif %}
{%- endfor %}
"""  # noqa: E501  # upstream's template line for line (less its comments)


def build_base(out: Path, base: Path | None, seed: int, *, hidden_size: int = 64) -> Path:
    """Write a tiny CSM base model (weights, configs, processor) to `out`.

    `hidden_size` (the backbone's width) lets tests build a second, incompatible base.
    """
    import torch

    if base is not None:
        raise InvalidArgument("--base is for csm-lora; a csm base model is built from scratch")
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    model = _hf().CsmForConditionalGeneration(_config(tokenizer, hidden_size=hidden_size))
    _fill_codebooks(model.codec_model)
    _set_generation_defaults(model)
    model.save_pretrained(out)
    _processor(tokenizer).save_pretrained(out)
    return out


def build_lora(out: Path, base: Path | None, seed: int) -> Path:
    """Write a PEFT LoRA voice for the tiny base at `base` to `out`."""
    import torch
    from peft import LoraConfig, get_peft_model

    if base is None:
        raise InvalidArgument(
            "csm-lora needs --base: the base model folder the adapter is trained for",
            hint="build one with `duplexd devkit tiny-model csm`",
        )
    if not (base / "config.json").is_file():
        raise InvalidArgument(f"{base} is not a CSM model folder (no config.json)")
    # resolved, so adapter_config.json's base_model_name_or_path names the folder wherever run
    model = _hf().CsmForConditionalGeneration.from_pretrained(base.resolve())
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        bias="none",
    )
    torch.manual_seed(seed)  # A's random init and B below: same seed, same adapter
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: a fresh LoRA would change nothing
                param.copy_(torch.randn(param.shape) * 0.5)
    peft_model.save_pretrained(str(out))
    return out


def _config(tokenizer: Any, *, hidden_size: int) -> Any:
    """A CsmConfig of the real architecture at toy sizes (special ids from the tokenizer)."""
    hf = _hf()
    codec = hf.MimiConfig(
        hidden_size=64,
        num_filters=8,
        num_residual_layers=1,
        upsample_groups=64,
        codebook_size=_CODEBOOK_SIZE,
        codebook_dim=32,
        num_quantizers=_NUM_CODEBOOKS,
        num_semantic_quantizers=1,
        vector_quantization_hidden_dimension=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        intermediate_size=128,
    )
    depth = hf.CsmDepthDecoderConfig(
        num_codebooks=_NUM_CODEBOOKS,
        backbone_hidden_size=hidden_size,
        vocab_size=_CODEBOOK_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=_NUM_CODEBOOKS + 1,
    )
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO)
    return hf.CsmConfig(
        num_codebooks=_NUM_CODEBOOKS,
        vocab_size=_CODEBOOK_SIZE,
        text_vocab_size=_TEXT_VOCAB,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=audio_id,  # as upstream: the audio token doubles as padding
        codebook_pad_token_id=_CODEBOOK_SIZE - 1,
        codebook_eos_token_id=0,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        audio_token_id=audio_id,
        audio_eos_token_id=tokenizer.convert_tokens_to_ids(AUDIO_EOS),
        depth_decoder_config=depth,
        codec_config=codec,
    )


def _fill_codebooks(codec: Any) -> None:
    """Random Mimi codebooks. A fresh MimiModel's are all zeros (they are learned), so every
    code would decode to the same sound and nothing downstream could tell voices apart."""
    import torch

    with torch.no_grad():
        for name, buffer in codec.named_buffers():
            if name.endswith(".embed_sum"):
                buffer.normal_()


def _set_generation_defaults(model: Any) -> None:
    """The sampling defaults `sesame/csm-1b` ships in generation_config.json."""
    gen = model.generation_config
    gen._from_model_config = False
    gen.max_new_tokens = 125
    gen.do_sample, gen.top_k, gen.temperature = True, 50, 0.9
    gen.depth_decoder_do_sample, gen.depth_decoder_top_k = True, 50
    gen.depth_decoder_temperature = 0.9


def _tokenizer() -> Any:
    """Character-level stand-in for the Llama 3 tokenizer, with the same special tokens."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate([UNK, *_CHARS, *_SPECIALS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.post_processor = processors.TemplateProcessing(  # as sesame's Llama 3 tokenizer
        single=f"{BOS}:0 $A:0 {EOS}:0",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    tokenizer = _hf().PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=EOS,  # as sesame's tokenizer
        additional_special_tokens=[AUDIO, AUDIO_EOS],
    )
    return tokenizer


def _processor(tokenizer: Any) -> Any:
    hf = _hf()
    extractor = hf.EncodecFeatureExtractor(feature_size=1, sampling_rate=24000, padding_value=0.0)
    return hf.CsmProcessor(
        feature_extractor=extractor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def _hf() -> Any:
    """transformers, typed loosely: its classes are untyped callables to strict mypy."""
    import transformers

    return transformers
