"""Command palette (Ctrl+P) entries: "Load model espeak-en", "Stop daemons", …

Commands are built from the dashboard's latest snapshot each time the palette searches, so
only what makes sense now is offered: "Load" for a model that is not resident, "Unload" for
one that is. With several workers each command names its worker.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol, runtime_checkable

from textual.command import DiscoveryHit, Hit, Hits, Provider

from duplexctl.tui.views import ModelView, Snapshot

__all__ = ["DaemonCommands", "Dashboard", "ModelCommands"]

Command = tuple[str, str, Callable[[], None]]  # text, help, callback


@runtime_checkable
class Dashboard(Protocol):
    """What the providers need of the screen that opened the palette."""

    snapshot: Snapshot | None

    def request_model(self, verb: str, model_id: str, addr: str) -> None: ...

    def request_daemons(self, verb: str) -> None: ...


class _DashProvider(Provider):
    def commands(self) -> list[Command]:
        raise NotImplementedError

    async def discover(self) -> Hits:
        for text, help_text, callback in self.commands():
            yield DiscoveryHit(text, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, help_text, callback in self.commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), callback, text=text, help=help_text)


class ModelCommands(_DashProvider):
    def commands(self) -> list[Command]:
        dash = self.screen
        if not isinstance(dash, Dashboard) or dash.snapshot is None:
            return []
        workers = [w for w in dash.snapshot.workers if w.reachable]
        out: list[Command] = []
        for w in workers:
            where = f" on {w.name}" if len(workers) > 1 else ""
            for m in w.models:
                for verb, help_text in _model_verbs(m):
                    text = f"{verb.replace('_', ' ').capitalize()} model {m.id}{where}"
                    out.append((text, help_text, partial(dash.request_model, verb, m.id, w.addr)))
        if len(workers) > 1:
            for model_id in dict.fromkeys(m.id for w in workers for m in w.models):
                callback = partial(dash.request_model, "preload", model_id, "")
                out.append((f"Preload model {model_id}", "load it on every worker", callback))
        return out


def _model_verbs(m: ModelView) -> list[tuple[str, str]]:
    if m.state == "unavailable":
        return []
    if not m.resident:
        return [("load", f"load and warm it ({m.family})"), ("pin", "load it and never evict it")]
    verbs = [("unload", "free its memory (asks first)")]
    verbs.append(("unpin", "let the TTL evict it again") if m.pinned else ("pin", "never evict it"))
    if m.pinned or m.is_default:
        verbs.append(("force_unload", "unload even though it is pinned or the default"))
    return verbs


class DaemonCommands(_DashProvider):
    def commands(self) -> list[Command]:
        dash = self.screen
        if not isinstance(dash, Dashboard):
            return []
        return [
            ("Start daemons", "duplexctl up --detach", partial(dash.request_daemons, "start")),
            ("Stop daemons", "duplexctl down (asks first)", partial(dash.request_daemons, "stop")),
            (
                "Restart daemons",
                "duplexctl down, then up --detach (asks first)",
                partial(dash.request_daemons, "restart_all"),
            ),
            (
                "Restart the selected daemon",
                "its supervisor starts it again (asks first)",
                partial(dash.request_daemons, "restart"),
            ),
        ]
