"""Fetch a catalog model's weights into ``<models_dir>/<model_id>/`` (`duplexctl models pull`).

Sources (the catalog's ``source:``, or ``--from``):

- ``https://`` / ``http://`` URL of an archive (``.tar.gz``, ``.tgz``, ``.tar[.bz2|.xz]``,
  ``.zip``) or of a single file. The download streams into
  ``<models_dir>/.partial/<model_id>/<name>.part`` and an interrupted one resumes from there
  with an HTTP ``Range`` request; the archive's SHA-256 is checked when the catalog (or
  ``--sha256``) gives one.
- ``file://`` URL or local path: an archive, a single file, or a folder (copied).
- a Hugging Face repo id (``owner/name``, ``hf://owner/name``, optionally ``@revision``):
  ``huggingface_hub.snapshot_download`` into ``.partial/<model_id>/hf/``, which it resumes.

Whatever the source, the files are assembled in a folder under ``<models_dir>/.partial/`` and
moved into place with one ``rename``: nothing half-written is ever at ``<models_dir>/<model_id>``.
An archive holding one top-level folder contributes that folder's contents. An existing copy is
left alone unless ``force``; then the new one is swapped in (atomically on Linux, where
``renameat2(RENAME_EXCHANGE)`` exists) and the old one deleted. On failure the model folder is
untouched; only a download worth resuming stays behind under ``.partial/``.

Modules, each one step: ``source`` (what ``source:``/``--from`` name, whether a model is
pulled), ``fetch`` (HTTP download with resume), ``hf`` (Hugging Face repos), ``archive``
(safe extraction into the payload), ``install`` (SHA-256, the lock, the atomic move into the
models dir), ``core`` (`pull`, tying them together) and ``base`` (errors, results, `Job`).
"""

from __future__ import annotations

from duplexctl.pull.base import (
    PARTIAL_DIR,
    BadArchive,
    ChecksumMismatch,
    Phase,
    PullProgress,
    PullResult,
    PullStatus,
    Source,
    SourceNotFound,
    SourceUnreachable,
)
from duplexctl.pull.core import pull
from duplexctl.pull.source import is_pulled, parse_source, pull_status

__all__ = [
    "PARTIAL_DIR",
    "BadArchive",
    "ChecksumMismatch",
    "Phase",
    "PullProgress",
    "PullResult",
    "PullStatus",
    "Source",
    "SourceNotFound",
    "SourceUnreachable",
    "is_pulled",
    "parse_source",
    "pull",
    "pull_status",
]
