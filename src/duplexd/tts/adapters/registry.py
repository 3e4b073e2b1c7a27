"""Adapter discovery through the ``duplexd.tts_adapters`` entry-point group.

Families are listed without importing them (importing an engine can cost seconds and pull in
torch); loading one named family imports just that module and fails loudly if it is broken.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from duplexd.errors import ModelLoadError
from duplexd.tts.adapters.base import TTSAdapter

__all__ = ["GROUP", "adapter_class", "available_families"]

GROUP = "duplexd.tts_adapters"


def available_families() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def adapter_class(family: str) -> type[TTSAdapter]:
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == family]
    if not matches:
        raise ModelLoadError(
            f"no adapter for family {family!r}",
            hint=f"installed families: {', '.join(available_families()) or 'none'}",
        )
    try:
        cls = matches[0].load()
    except ImportError as exc:
        raise ModelLoadError(
            f"adapter {family!r} cannot be imported: {exc}",
            hint="install the extra that provides it, e.g. `uv sync --extra ml`",
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, TTSAdapter)):
        raise ModelLoadError(f"entry point {matches[0].value} is not a TTSAdapter subclass")
    return cls
