"""Has the user finished their turn? The fixed-silence rule, or Pipecat's Smart Turn model.

`SmartTurn` runs Smart Turn v3.2 (BSD-2-Clause, an 8.7 MB int8 ONNX audio model that ships
inside the `pipecat-ai` wheel) on onnxruntime: the last ≤ 8 s of the turn's 16 kHz audio →
Whisper-style log-mel features (computed by pipecat's own numpy code, with BLAS held to one
thread: otherwise a decision's time doubles under load) → the probability that the turn is
complete. One model serves every session; decisions run on a small thread pool, never on the
event loop.

The policy that asks it lives in the listener (listening.py): at `smart_turn.ask_after_ms` of
silence ask; complete above `threshold` → the turn ends at `min_silence_ms` of silence (now, if
that has passed); otherwise keep listening and ask
again every `reask_ms`, ending at `max_silence_ms` whatever it says. Resumed speech cancels all
of it. `silence` is the baseline: the turn ends after `end_of_turn_silence_ms`.

The model hears intonation, not grammar, and a speaker who pauses mid-sentence often sounds
finished to it ("I'd like to book a table for …" scores 0.95 with a Piper voice). So a
"complete" is also checked against the speculative transcript (`turn.transcript_check`):
a sentence does not end in an article, a preposition, a conjunction, or a copula after a noun
("my favourite colour is"), unless it is a question. Whisper also guesses the end of a phrase
cut short ("a table for" → "a table for two."), so words it was unsure of at the end
(`turn.unsure_word_p`) are read as maybe never said. `dangling` says so; the listener then
keeps listening as if the model had said "not done". A wrong call here costs latency (the
next question to the model, at worst the maximum silence), never a cut-in. And where Whisper
was unsure of the last word at all, the words it stopped on may not be the ones said ("Tell me
a" → "Tell me that.", "leaves at" → "leaves it"): a "complete" then ends the turn no sooner
than the silence rule would (`end_of_turn_silence_ms`), never later; so does a transcript that
trails off (`trails_off`: no closing ".", "?" or "!", or an ellipsis), Whisper's own way of
writing a voice that stopped mid-sentence ("My favourite colour is" → "my favorite colors").

A missing or corrupt model never crashes the orchestrator: `load_end_of_turn` says which file
and why, and the daemon falls back to the silence rule with that warning in `/status` and the
log (app.py).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from duplexd.audio.pcm import Int16Array
from duplexd.config import SmartTurnSoftmax as Softmax
from duplexd.errors import ConfigError
from duplexd.logging import get_logger
from duplexd.priority import raise_thread_priority, realtime_thread_priority, thread_priority

__all__ = [
    "MAX_AUDIO_S",
    "Decision",
    "EndOfTurn",
    "EndOfTurnUnavailable",
    "SmartTurn",
    "bundled_model",
    "dangling",
    "guessed_words",
    "load_end_of_turn",
    "trails_off",
]

log = get_logger("duplexd.orchestrator.endofturn")

# Decision threads run at the top CPU priority where the OS allows (real-time, else nice -20:
# priority.py): a decision is ~35 ms of one core that a turn may wait on, and at any lower level
# bulk work on a loaded machine (8 sessions' ASR, synthesis) stretched it to 90-230 ms p95 (nice
# -5); at nice -20 the worker's synthesis, in another autogroup, still held it up: 70-100 ms p95,
# against 46 real-time (8 sessions, 24 decisions, wall time = its CPU time). One thread by
# default (`turn.smart_turn_threads`), so the other core always stays for the event loop: asked
# at the pause, a decision has ~190 ms of slack before the minimum silence, so decisions queue
# for it rather than take both cores.
DECISION_PRIORITY = 20
MAX_AUDIO_S = 8  # the model sees the last 8 s of the turn (16 kHz)
# A word the decoder was unsure of that starts this close to the end of speech, or after it,
# is taken as its guess (alignment is in 20 ms steps; a last word really said there starts
# 100-330 ms before the end in our runs, a guessed one at or after it)
GUESS_WINDOW_MS = 100
_RATE = 16_000
_BUNDLED = ("pipecat.audio.turn.smart_turn.data", "smart-turn-v3.2-cpu.onnx")


class EndOfTurnUnavailable(ConfigError):
    """The end-of-turn model cannot be used (missing package or file, corrupt model)."""


@dataclass(frozen=True, slots=True)
class Decision:
    complete: bool
    probability: float
    model_ms: float  # features + inference, on the decision thread


class EndOfTurn(Protocol):
    """Decides from the turn's audio whether the user is done."""

    name: str
    priority: str  # its decision threads' CPU priority, in words ("real-time", "nice -20")

    async def decide(self, audio: Int16Array) -> Decision: ...


def bundled_model() -> Path:
    """Where the Smart Turn ONNX in the installed pipecat-ai wheel is."""
    from importlib import resources

    try:
        return Path(str(resources.files(_BUNDLED[0]).joinpath(_BUNDLED[1])))
    except ModuleNotFoundError:
        raise EndOfTurnUnavailable(
            "the Smart Turn model ships in the pipecat-ai package, which is not installed",
            hint="pip install 'duplex[turn]' (scripts/setup.sh installs it)",
        ) from None


class SmartTurn:
    name = "smart-turn"

    def __init__(
        self,
        model: Path,
        *,
        threshold: float = 0.5,
        threads: int = 1,
        op_threads: int = 1,
        softmax: Softmax = "float",
        realtime: bool = True,
    ) -> None:
        self.model, self.threshold = model, threshold
        self.priority = "default"  # the decision threads', in words (thread_priority)
        if not model.is_file():
            raise EndOfTurnUnavailable(f"end-of-turn model {model} does not exist")
        try:
            import onnxruntime as ort
            from loguru import logger

            logger.disable("pipecat")  # its import banner and debug lines are not our log
            from pipecat.audio.turn.smart_turn._whisper_features import (
                compute_whisper_log_mel_features,
            )
        except ImportError as exc:
            raise EndOfTurnUnavailable(
                f"Smart Turn needs onnxruntime and pipecat-ai: {exc}",
                hint="pip install 'duplex[turn]'",
            ) from None
        from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]

        self._features = compute_whisper_log_mel_features
        self._blas = ThreadpoolController()  # found once: a limit per decision is then ~10 µs
        # Decisions run here: one at a time per thread, sessions share the pool. A decision is
        # short and someone waits on it: its threads ask to go before bulk work (ASR, synthesis).
        self._pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="end-of-turn",
            initializer=_decision_thread, initargs=(realtime,),
        )  # fmt: skip
        try:
            # loaded on a decision thread: onnxruntime's own compute threads (op_threads > 1)
            # start there, and so keep its priority
            self._session = self._pool.submit(self._load, ort, softmax, op_threads).result()
            self._input = self._session.get_inputs()[0].name
            self._decide_sync(np.zeros(_RATE // 2, dtype=np.int16))  # warm and validate
        except Exception as exc:  # onnxruntime raises its own types for corrupt files
            self.close()
            raise EndOfTurnUnavailable(
                f"end-of-turn model {model} could not be loaded: {type(exc).__name__}: {exc}"
            ) from None

    def _load(self, ort: Any, softmax: Softmax, op_threads: int) -> Any:
        self.priority = thread_priority()
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = op_threads
        # a compute thread spinning for the next op after a decision would hold a core at the
        # top priority, away from everything else: they sleep instead
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source: str | bytes = str(self.model)
        if softmax == "float" and (rewritten := _float_softmax(ort, self.model)) is not None:
            source = rewritten  # optimized already: onnxruntime must not fuse them again
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        cpu = ["CPUExecutionProvider"]
        return ort.InferenceSession(source, sess_options=options, providers=cpu)

    async def decide(self, audio: Int16Array) -> Decision:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._decide_sync, audio)

    def _decide_sync(self, audio: Int16Array) -> Decision:
        started = time.perf_counter()
        x = audio[-MAX_AUDIO_S * _RATE :].astype(np.float32) / 32768.0
        x = np.pad(x, (MAX_AUDIO_S * _RATE - len(x), 0))  # the model expects the end aligned
        with self._blas.limit(limits=1):
            features = self._features(x, do_normalize=True)
        out: Any = self._session.run(None, {self._input: features[None]})
        probability = float(np.asarray(out[0]).ravel()[0])
        ms = (time.perf_counter() - started) * 1000
        return Decision(probability >= self.threshold, probability, ms)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _decision_thread(realtime: bool) -> None:
    raise_thread_priority(DECISION_PRIORITY)  # what it keeps where real-time is refused
    if realtime:
        realtime_thread_priority()


def _float_softmax(ort: Any, model: Path) -> bytes | None:
    """`model` as onnxruntime optimizes it, with its 8-bit softmaxes computed in float.

    Smart Turn is quantized as a QDQ graph: each attention softmax is dequantize → softmax →
    quantize. onnxruntime fuses that into its 8-bit QLinearSoftmax, a lookup-table kernel that
    takes 2.8 ms per layer here (a fifth of a decision); dequantize → float softmax → quantize
    is what the graph says, takes 0.7 ms, and lands nearer the graph computed literally in
    float (tests/unit/test_endofturn.py). None (and a warning) if the graph has none or the
    optimized graph cannot be written: the model then runs with onnxruntime's own kernels.
    Corrupt model files raise, as loading them would.
    """
    import onnx
    from onnx import helper

    try:
        with tempfile.TemporaryDirectory(prefix="duplex-smart-turn-") as tmp:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
            graph = onnx.load(options.optimized_model_filepath)
    except OSError as exc:
        log.warning("Smart Turn runs its 8-bit softmax kernel", model=str(model), error=str(exc))
        return None
    nodes, replaced = [], 0
    for node in graph.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "QLinearSoftmax" or int(attrs.get("opset", 13)) < 13:
            nodes.append(node)  # before opset 13 a softmax flattened its input first
            continue
        x, x_scale, x_zero, y_scale, y_zero = node.input
        dequantized, probabilities = f"{node.output[0]}/float_in", f"{node.output[0]}/float_out"
        nodes += [
            helper.make_node("DequantizeLinear", [x, x_scale, x_zero], [dequantized]),
            helper.make_node("Softmax", [dequantized], [probabilities], axis=attrs.get("axis", -1)),
            helper.make_node("QuantizeLinear", [probabilities, y_scale, y_zero], node.output),
        ]
        replaced += 1
    if not replaced:
        log.warning("Smart Turn model has no 8-bit softmax to compute in float", model=str(model))
        return None
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    _fuse_gelu(graph)
    return bytes(graph.SerializeToString())


def _fuse_gelu(graph: Any) -> int:
    """Each GELU spelled out in float ops, x · ½(1 + erf(x/√2)), made one Gelu: onnxruntime's
    kernel for that same formula. Its own fusion misses them here, because its QDQ pass gave
    the last multiply a copy of the dequantize that feeds x. Returns how many."""
    import math

    from onnx import helper, numpy_helper

    nodes = list(graph.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    scalars = {
        i.name: float(numpy_helper.to_array(i).ravel()[0])
        for i in graph.graph.initializer
        if math.prod(i.dims) == 1
    }

    def next_op(out: str, op: str, constant: float | None = None) -> Any:
        """The one node that reads `out`, if it is `op` (with `constant` as its other input)."""
        readers = consumers.get(out, [])
        if len(readers) != 1 or readers[0].op_type != op:
            return None
        other = [name for name in readers[0].input if name != out]
        if constant is not None and not (
            len(other) == 1 and abs(scalars.get(other[0], math.nan) - constant) < 1e-5
        ):
            return None
        return readers[0]

    def same(a: str, b: str) -> bool:  # one tensor, or two dequantizes of the same thing
        pa, pb = producer.get(a), producer.get(b)
        return a == b or (
            pa is not None and pb is not None and pa.op_type == pb.op_type == "DequantizeLinear"
            and list(pa.input) == list(pb.input) and pa.attribute == pb.attribute
        )  # fmt: skip

    dropped: set[int] = set()
    fused: dict[int, Any] = {}  # the last node of a GELU → the Gelu that replaces it
    for div in nodes:
        if div.op_type != "Div" or abs(scalars.get(div.input[1], 0.0) - math.sqrt(2)) > 1e-5:
            continue
        x = div.input[0]
        erf = next_op(div.output[0], "Erf")
        one = erf and next_op(erf.output[0], "Add", 1.0)
        half = one and next_op(one.output[0], "Mul", 0.5)
        last = half and next_op(half.output[0], "Mul")
        if not last:
            continue
        x_again = next(name for name in last.input if name != half.output[0])
        if not same(x, x_again):
            continue
        dropped |= {id(n) for n in (div, erf, one, half, last)}
        if x_again != x and len(consumers[x_again]) == 1:
            dropped.add(id(producer[x_again]))  # its copy of the dequantize
        fused[id(last)] = helper.make_node("Gelu", [x], list(last.output), domain="com.microsoft")
    kept = [fused.get(id(n), n) for n in nodes if id(n) not in dropped or id(n) in fused]
    del graph.graph.node[:]
    graph.graph.node.extend(kept)
    read = {name for n in kept for name in n.input}
    unread = [i for i in graph.graph.initializer if i.name not in read]  # the 1, ½ and √2
    for initializer in unread:
        graph.graph.initializer.remove(initializer)
    return len(fused)


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Words no sentence ends with, question or not (Whisper often hears a rising fragment as a
# question: "Is it going to?"): articles, possessive determiners, conjunctions, "to".
_NEVER_LAST = _word_set("""a an the my your our their its every and or but nor because
    although though unless than whether to""")
# Prepositions: a question may end in one ("what are you looking for?"), a statement does not.
# Particles that also end phrasal verbs ("come in", "hold on") are kept: a pause there reads as
# unfinished far more often than not, and a wrong call costs latency, not a cut-in.
_PREPOSITIONS = _word_set("of for at in on with from into onto about towards during between")
# A copula or auxiliary at the end is finished only after a pronoun ("yes, it is", "here you
# are"); after a noun it waits for its complement ("my favourite colour is").
_AUXILIARIES = _word_set("is are was were am be will would can could should has have had")
_PRONOUNS = _word_set("i you he she it we they there that this who which what here so")


def dangling(text: str, guessed: int = 0) -> bool:
    """Whether `text` (a transcript) stops where a sentence cannot end: an article, a
    determiner, a conjunction or "to"; a preposition ending a statement; a copula after a
    noun. Whisper guesses the end of a phrase cut short ("I'd like to book a table for" →
    "… a table for two."): with `guessed`, up to that many words at the end may never have
    been said, and the text also stops mid-sentence if it does without any number of them
    ("… a table for", a statement now that its "?" or "." went with them)."""
    stripped = text.strip()
    said = stripped.split()
    if _stops_mid_sentence(said, stripped.endswith(("?", "!"))):
        return True
    return any(
        _stops_mid_sentence(said[:end], question=False)
        for end in range(max(1, len(said) - guessed), len(said))
    )


def trails_off(text: str) -> bool:
    """Whether Whisper heard `text` trail off rather than end: it closes a sentence it heard
    end with ".", "?" or "!", and writes a voice that stops mid-sentence without one ("my
    favorite colors", "… leaves it"), with an ellipsis ("Tell me that...") or a cut-off word
    ("a table for f-"). Empty text (a cough, a breath) does not."""
    stripped = text.strip().rstrip("\"')]")
    if not stripped:
        return False
    return stripped.endswith(("...", "\u2026", "-")) or stripped[-1] not in ".?!"


def guessed_words(
    word_p: Sequence[float] | None,
    word_start_ms: Sequence[float] | None,
    speech_end_ms: float,
    unsure_below: float,
) -> int:
    """How many words at the end of a transcript Whisper likely guessed: each unsure (its
    probability below `unsure_below`) and starting no earlier than 100 ms before the speech
    ended (a word said there would have begun before). 0 where the engine does not tell."""
    if word_p is None or word_start_ms is None or len(word_p) != len(word_start_ms):
        return 0
    n = 0
    for p, start in zip(reversed(word_p), reversed(word_start_ms), strict=True):
        if p >= unsure_below or start < speech_end_ms - GUESS_WINDOW_MS:
            break
        n += 1
    return n


def _stops_mid_sentence(said: list[str], question: bool) -> bool:
    words = ["".join(c for c in w.lower() if c.isalnum() or c == "'") for w in said]  # "at 7."
    words = [w for w in words if w]
    if not words:
        return False
    last = words[-1]
    if last in _NEVER_LAST:
        return True
    if question:
        return False
    if last in _PREPOSITIONS:
        return True
    return last in _AUXILIARIES and len(words) > 1 and words[-2] not in _PRONOUNS


def load_end_of_turn(
    engine: str,
    model: Path | None,
    *,
    threshold: float,
    threads: int = 1,
    op_threads: int = 1,
    softmax: Softmax = "float",
    realtime: bool = True,
) -> tuple[EndOfTurn | None, str | None]:
    """The configured end-of-turn model, or (None, why) to fall back to the silence rule."""
    if engine == "silence":
        return None, None
    try:
        turn = SmartTurn(
            model or bundled_model(),
            threshold=threshold,
            threads=threads,
            op_threads=op_threads,
            softmax=softmax,
            realtime=realtime,
        )
        log.info("end-of-turn model loaded", model=str(turn.model), priority=turn.priority)
        return turn, None
    except EndOfTurnUnavailable as exc:
        warning = f"{exc}; ending turns by silence instead"
        log.warning("end-of-turn model unavailable", error=warning)
        return None, warning
