from __future__ import annotations

from collections.abc import Iterator

import pytest

from duplexd.devkit.procs import DaemonProc, daemon

# Worker knobs for tests: short TTL so eviction is observable in seconds, not minutes.
FAST_TTL = [
    "--ttl-ms",
    "1500",
    "--min-residency-ms",
    "0",
    "--evict-check-interval-ms",
    "200",
]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """One real `duplexd worker` (Piper default) per test module."""
    with daemon("worker", tmp_path_factory.mktemp("worker"), FAST_TTL) as proc:
        yield proc
