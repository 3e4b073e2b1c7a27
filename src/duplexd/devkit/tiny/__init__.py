"""Tiny randomly initialised models of the real architectures, in the upstream on-disk layouts.

No weights can be downloaded on our CI machines, so tests (and anyone without a GPU) build a
tiny model of the real architecture with the real library and write it exactly where and how a
pulled checkpoint would lie. The worker then loads it through the same code as real weights.

    duplexd devkit tiny-model xtts --out $DUPLEX_MODELS_DIR/xtts-v2-en
    duplexd devkit tiny-model csm --out $DUPLEX_MODELS_DIR/sesame-csm-1b
    duplexd devkit tiny-model csm-lora --base $DUPLEX_MODELS_DIR/sesame-csm-1b \
        --out $DUPLEX_MODELS_DIR/sesame-unsloth-lora01

Each builder needs its family's extra (``duplex[xtts]``, ``duplex[csm]``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from duplexd.errors import InvalidArgument

__all__ = ["BUILDERS", "build_tiny_model"]

# kind -> "module:function"; the function takes (out: Path, base: Path | None, seed: int) and
# returns the folder it wrote. Imported lazily: each pulls in torch.
BUILDERS: dict[str, str] = {
    "xtts": "duplexd.devkit.tiny.xtts:build",
    "csm": "duplexd.devkit.tiny.csm:build_base",
    "csm-lora": "duplexd.devkit.tiny.csm:build_lora",
    "spark": "duplexd.devkit.tiny.spark:build",
    "parler": "duplexd.devkit.tiny.parler:build",
}

# the catalog id each kind is written for by default (under $DUPLEX_MODELS_DIR)
DEFAULT_IDS: dict[str, str] = {
    "xtts": "xtts-v2-en",
    "csm": "sesame-csm-1b",
    "csm-lora": "sesame-unsloth-lora01",
    "spark": "spark-tts-0.5b",
    "parler": "parler-tts-mini-v1",
}


def build_tiny_model(kind: str, out: Path, *, base: Path | None = None, seed: int = 0) -> Path:
    """Write a tiny model of `kind` to `out` (created; must be empty if it exists)."""
    if kind not in BUILDERS:
        raise InvalidArgument(
            f"no tiny-model builder {kind!r}", hint=f"kinds: {', '.join(BUILDERS)}"
        )
    if out.exists() and any(out.iterdir()):
        raise InvalidArgument(f"{out} exists and is not empty", hint="pick an empty folder")
    module_name, _, func_name = BUILDERS[kind].partition(":")
    builder: Callable[[Path, Path | None, int], Path] = getattr(
        importlib.import_module(module_name), func_name
    )
    out.mkdir(parents=True, exist_ok=True)
    return builder(out, base, seed)
