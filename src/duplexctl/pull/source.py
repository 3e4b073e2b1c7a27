"""Where a model's files come from (``source:``, ``--from``) and whether they are here already."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from duplexctl.pull.base import PullStatus, Source
from duplexctl.pull.install import importable, nonempty
from duplexd.errors import ConfigError, FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from duplexd.tts.catalog import ModelMeta

__all__ = ["is_pulled", "parse_source", "pull_status", "resolve_source"]

_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


# -- status ----------------------------------------------------------------------------------


def pull_status(meta: ModelMeta, models_dir: Path) -> PullStatus:
    """Whether a model's files are on this machine.

    ``yes``: its folder under `models_dir` (or its ``models://`` weights) exists and is not
    empty; ``package``: its ``package://`` weights' package is importable; ``voicepack``: its
    weights are a file shipped in the voicepack; ``none``: it has neither weights nor a source
    (e.g. eSpeak, which runs a program); ``no``: anything else.
    """
    weights = meta.weights or ""
    if weights.startswith("package://"):
        module = weights.removeprefix("package://").partition("/")[0]
        return "package" if importable(module) else "no"
    if nonempty(models_dir / meta.model_id):
        return "yes"
    if weights.startswith("models://"):
        return "yes" if nonempty(models_dir / weights.removeprefix("models://")) else "no"
    if weights:
        path = Path(weights).expanduser()
        return "voicepack" if (meta.base_dir / path).exists() else "no"
    return "no" if meta.source else "none"


def is_pulled(meta: ModelMeta, models_dir: Path) -> bool:
    """True when the model needs no pull: its files are here (or ship in a package)."""
    return pull_status(meta, models_dir) in ("yes", "package", "voicepack")


# -- sources ---------------------------------------------------------------------------------


def parse_source(text: str, *, local_paths: bool = True) -> Source:
    """Classify a ``source:`` value or a ``--from`` argument.

    A string that is both an existing local path and shaped like ``owner/name`` is the path
    when `local_paths` (``--from``); a catalog source (`local_paths` False) must be a URL,
    an absolute path or a repo id.
    """
    text = text.strip()
    scheme = urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        return Source("http", text)
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise InvalidArgument(
                f"file URL {text!r} names host {parts.netloc!r}",
                hint="use file:///absolute/path (three slashes) or a plain path",
            )
        path = Path(url2pathname(unquote(parts.path)))
        return Source("dir" if path.is_dir() else "file", str(path))
    if scheme == "hf":
        return _hf_source(text[len("hf://") :], text)
    path = Path(text).expanduser()
    if text.startswith(("/", "~", "./", "../")) or (local_paths and path.exists()):
        return Source("dir" if path.is_dir() else "file", str(path))
    if _HF_REPO.match(text):
        return _hf_source(text, text)
    if local_paths:
        return Source("file", str(path))  # reported as "no such file" by the pull
    raise ConfigError(
        f"source {text!r} is not an https:// or file:// URL, an absolute path or a "
        "Hugging Face repo id (owner/name)",
        hint="fix `source:` in the catalog entry or voicepack metadata.yaml",
    )


def _hf_source(spec: str, original: str) -> Source:
    repo, _, revision = spec.partition("@")
    if not _HF_REPO.match(repo):
        raise ConfigError(
            f"source {original!r}: {repo!r} is not a Hugging Face repo id (owner/name)",
            hint="write hf://owner/name or hf://owner/name@revision",
        )
    return Source("hf", repo, revision or None)


def resolve_source(meta: ModelMeta, source_override: str | Path | None) -> Source | str:
    """The source to pull from, or the package name when the weights ship in a package."""
    if source_override is not None:
        return parse_source(str(source_override), local_paths=True)
    if meta.source:
        return parse_source(meta.source, local_paths=False)
    weights = meta.weights or ""
    if weights.startswith("package://"):
        return weights.removeprefix("package://").partition("/")[0]
    if not weights:
        raise FailedPrecondition(
            f"{meta.model_id} has no weights to pull: it runs without model files",
            hint=f"load it directly: duplexctl models load {meta.model_id}",
        )
    raise FailedPrecondition(
        f"{meta.model_id} names no `source` in its catalog entry, so there is nothing to pull "
        "it from",
        hint=f"copy the files here and run `duplexctl models pull {meta.model_id} --from PATH` "
        "(a folder or an archive), or add `source:` to its voicepack metadata.yaml",
    )
