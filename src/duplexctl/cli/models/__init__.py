"""`duplexctl models list|pull|load|unload|pin|unpin|preload`: models and the workers' Managers.

`list` reads like `ollama ps`: what each worker has resident, how much memory it takes and
how long it stays (the idle TTL counting down, "forever" for pinned and default models).
Every other command is one RPC per model and worker; a refusal (unknown model, in use, no
room, busy) prints the worker's reason and exits with that error's code (see errors.py).

`pull` is local, like `ollama pull`: it fetches a catalog model's weights into the models dir
(duplexctl.pull) with a progress bar; `list` adds whether each model is pulled on this machine,
and when no worker answers it still shows the local catalog.

Without ``--worker`` a command goes to every worker `duplexctl up` started (else to
127.0.0.1:7001). With a fleet registry (``--redis URL`` or ``DUPLEX_REDIS_URL``) `list` shows
every registered worker too, and ``--worker NAME`` also finds workers registered there.

Modules: ``listing`` (`list` and its tables), ``pulling`` (`pull` and its progress bar),
``residency`` (load, preload, unload, pin, unpin), ``workers`` (reaching the workers),
``options`` (the options the commands share). Commands are registered here, in help order.
"""

# grpc loads inside the commands so `duplexctl --help` stays instant

from __future__ import annotations

import typer

from duplexctl.cli.models.listing import list_models
from duplexctl.cli.models.pulling import pull
from duplexctl.cli.models.residency import load, pin, preload, unload, unpin

__all__ = ["app"]

app = typer.Typer(
    help="List, pull, load, unload and pin TTS models (pull: onto this machine).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    epilog="""\
[bold]Examples[/bold]

  duplexctl models list                          every model on every worker

  duplexctl models pull xtts-v2-en               download its weights (resumes if cut off)

  duplexctl models pull my-voice --from ./my-voice.tar.gz   from a local copy

  duplexctl models load espeak-en                load (and warm) a model

  duplexctl models preload espeak-en,piper-en-us-joe

  duplexctl models pin espeak-en                 never evict it; `unpin` undoes

  duplexctl models unload espeak-en --force      even if pinned or the default

  duplexctl models list --worker 10.0.0.7:7001   one worker, by address or daemon name

  duplexctl models list --redis redis://h:6379   every worker registered in the fleet
""",
)

app.command("list")(list_models)
app.command()(pull)
app.command()(load)
app.command()(preload)
app.command()(unload)
app.command()(pin)
app.command()(unpin)
