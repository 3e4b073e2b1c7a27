"""A model's STATE as the console shows it: one set of words and colours for `models list` and
the dashboard (and the orchestrator's ``/models`` carries the same words).

The words come from the worker (`ModelInfo.status`, decided in `duplexd.tts.readiness`):
``resident``, ``loading``, ``unloading``, ``not loaded``, or why the model cannot load on that
worker: ``not pulled``, ``needs extra X``, ``needs F env``, ``base not pulled``,
``unavailable``. A worker from before that field gets the words of its state enum.
Standard library only.
"""

from __future__ import annotations

__all__ = ["fix_for", "short_reason", "state_style", "state_word"]

_ENUM_WORDS = {
    "not_loaded": "not loaded",
    "loading": "loading",
    "resident": "resident",
    "unloading": "unloading",
    "unavailable": "unavailable",
}


def state_word(status: str, state: str) -> str:
    """The word to show: the worker's `status`, else its lower-case `state` enum name."""
    return status or _ENUM_WORDS.get(state, state.replace("_", " "))


def state_style(word: str) -> str:
    """Green when it serves, yellow when it is on its way or needs a step, red when it cannot."""
    if word in ("resident", "idle"):
        return "green"
    if word in ("loading", "unloading"):
        return "yellow"
    if word == "not loaded":
        return "dim"
    if word == "unavailable":
        return "red"
    return "yellow"  # not pulled, needs extra X, needs F env, base not pulled: a step away


def fix_for(word: str) -> str | None:
    """What to run for a model in STATE `word`, said once under a listing (None: nothing)."""
    if word in ("not pulled", "base not pulled"):
        return "not pulled: `duplexctl models pull ID` downloads a model's weights"
    if word.startswith("needs extra "):
        extra = word.removeprefix("needs extra ")
        return f"{word}: `uv sync --extra {extra}` (or pip install 'duplex[{extra}]'), then restart"
    if word.startswith("needs ") and word.endswith(" env"):
        family = word.removeprefix("needs ").removesuffix(" env")
        return f"{word}: `bash scripts/engine-env.sh {family}`, see docs/models.md"
    return None


def short_reason(reason: str, limit: int = 72) -> str:
    """The first clause of a reason ("MeloTTS cannot be installed with this build"), for one
    line under a table; the whole reason is in ``-o wide`` and docs/models.md."""
    cut = len(reason)
    for mark in (": ", " (", "; "):
        at = reason.find(mark)
        if 0 < at < cut:
            cut = at
    text = reason[:cut].strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
