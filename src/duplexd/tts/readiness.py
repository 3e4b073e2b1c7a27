"""What a worker can tell about a model without loading it: can it load here, and if not, why.

A `Blocker` is one reason a load cannot happen on this worker now, found with stat calls and
module lookups only (no engine import, no weights read): the weights are not pulled, the
engine's extra (or its own environment) is not installed, the family has no adapter, the
catalog marks the model unavailable. The Model Manager asks before a load makes room, so a
load that cannot happen never evicts a warm model and its error names the real cause; and
ListModels shows the blocker's `word` in STATE, the same word in `duplexctl models list`, the
dashboard and the orchestrator's ``/models``.

Checked in this order, the first found wins: the catalog's `unavailable`, the worker's family
restriction, the family's adapter and an engine that lives in its own environment (Parler:
nothing done here makes it load here), then the weights, then the engine's pip extra.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from duplexd.errors import DuplexError, ModelLoadError, WeightsMissing
from duplexd.tts.catalog import ModelMeta

if TYPE_CHECKING:
    from duplexd.tts.adapters.base import TTSAdapter

__all__ = [
    "NOT_LOADED",
    "NOT_PULLED",
    "UNAVAILABLE",
    "Blocker",
    "CheckFn",
    "engine_blocker",
    "needs_env",
    "needs_extra",
    "weights_blocker",
]

# The words STATE shows for a model that is not resident (resident/loading/unloading are the
# states themselves).
NOT_LOADED = "not loaded"  # nothing stops a load
NOT_PULLED = "not pulled"  # its weights are not on the worker's machine: `duplexctl models pull`
UNAVAILABLE = "unavailable"  # this build or worker cannot serve it (the reason says why)


def needs_extra(extra: str) -> str:
    """The engine's pip extra is not installed: ``uv sync --extra X``."""
    return f"needs extra {extra}"


def needs_env(family: str) -> str:
    """The engine lives in its own environment (Parler): ``bash scripts/engine-env.sh X``."""
    return f"needs {family} env"


@dataclass(frozen=True)
class Blocker:
    """Why a model cannot load on this worker now."""

    word: str  # what STATE shows: NOT_PULLED, needs_extra(x), needs_env(f), UNAVAILABLE
    error: DuplexError  # what a load answers (message and hint)

    @property
    def reason(self) -> str:
        return str(self.error)


CheckFn = Callable[[ModelMeta], Blocker | None]
"""Blocking but cheap (stat calls and module lookups): the Blocker for `meta`, or None."""


def weights_blocker(meta: ModelMeta) -> Blocker | None:
    """Its weights are missing: not pulled, or their Python package is not installed."""
    if not meta.weights:
        return None
    try:
        meta.weights_path()
    except WeightsMissing as exc:
        if meta.weights.startswith("package://") and meta.extra:
            # the package ships with the family's extra (kokoro): the extra is what is missing
            return Blocker(needs_extra(meta.extra), _extra_error(meta.extra, exc.message))
        return Blocker(NOT_PULLED, exc)
    return None


def engine_blocker(cls: type[TTSAdapter]) -> Blocker | None:
    """The family's engine packages are not importable here (a lookup: nothing is imported)."""
    extra = cls.engine_extra or cls.family
    for module in cls.engine_modules:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            message = f"the {extra!r} family needs the Python package {module!r}: not installed"
            if cls.engine_hint:  # not a pip extra: the engine has its own environment
                return Blocker(needs_env(cls.family), ModelLoadError(message, hint=cls.engine_hint))
            return Blocker(needs_extra(extra), _extra_error(extra, message))
    return None


def _extra_error(extra: str, message: str) -> ModelLoadError:
    return ModelLoadError(
        message,
        hint=f"install the extra: `uv sync --extra {extra}` in a checkout, "
        f"or `pip install 'duplex[{extra}]'`",
    )
