"""Seeded fuzzing of the orchestrator's HTTP edge (routes, auth, WHIP), in-process over a real
socket: random methods, paths, headers, bodies and SDP offers. None may be answered 500 (an
unhandled error), and afterwards the daemon still answers its probes and a keyed `/status`.

The seed is printed; `DUPLEX_FUZZ_SEED=N pytest tests/unit/test_fuzz_http.py` replays a run.
"""

from __future__ import annotations

import os
import random
import string
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from duplexd.config import AuthConfig, OrchestratorConfig, WorkerEndpoint
from duplexd.devkit.served import served_orchestrator

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio]

SEED = int(os.environ.get("DUPLEX_FUZZ_SEED", "20261204"))
CASES = 300
KEY = "fuzz-key"
PATHS = ["/", "/healthz", "/readyz", "/status", "/metrics", "/models", "/whip", "/ws",
         "/web/app.js", "/whip/abc", "/whip/../status", "/%2e%2e/etc/passwd", "/status?x=1",
         "/models?worker=%00", "/nope", "/status/", "/whip?model=" + "x" * 5000]  # fmt: skip
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
TYPES = ["application/sdp", "application/json", "text/plain", "", "multipart/form-data; b=x",
         "application/sdp; charset=\x7f"]  # fmt: skip


@pytest_asyncio.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    cfg = OrchestratorConfig(auth=AuthConfig(api_key=KEY),
                             workers=[WorkerEndpoint(name="w0", addr="fake://w0")])  # fmt: skip
    async with served_orchestrator(cfg) as (test_client, _):
        yield test_client


def _junk(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.printable + "é中\x00") for _ in range(n))


def _sdp(rng: random.Random) -> str:
    """An SDP offer that is wrong in some way (or just noise)."""
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0",
             "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=rtpmap:111 opus/48000/2",
             "a=ice-ufrag:x", "a=ice-pwd:" + "y" * 22, "a=fingerprint:sha-256 00:11",
             "a=setup:actpass", "a=mid:0", "a=sendrecv"]  # fmt: skip
    pick = rng.randrange(4)
    if pick == 0:
        rng.shuffle(lines)
    elif pick == 1:
        del lines[rng.randrange(len(lines))]
    elif pick == 2:
        lines.insert(rng.randrange(len(lines)), _junk(rng, rng.randrange(1, 200)))
    else:
        return _junk(rng, rng.randrange(0, 3000))
    return "\r\n".join(lines) + "\r\n"


def _request(rng: random.Random) -> tuple[str, str, dict[str, str], bytes]:
    path = rng.choice(PATHS)
    usual = "POST" if path.startswith("/whip") else "GET"  # half the time, a method it takes
    method = usual if rng.random() < 0.5 else rng.choice(METHODS)
    headers: dict[str, str] = {}
    auth = rng.randrange(4)
    if auth == 1:
        headers["Authorization"] = f"Bearer {KEY}"
    elif auth == 2:
        wrong = ["Bearer", "Basic eA==", "Bearer " + "k" * 4000, f"bearer {KEY}x", _junk(rng, 20)]
        headers["Authorization"] = rng.choice(wrong).strip() or "x"
    if rng.random() < 0.7:
        headers["Content-Type"] = rng.choice(TYPES)
    body = rng.choice([b"", _sdp(rng).encode(), _junk(rng, 400).encode("utf-8", "replace"),
                       bytes(rng.randrange(256) for _ in range(rng.randrange(2048))),
                       b'{"type": "hello"}', b"x" * 300_000])  # fmt: skip
    # header values a client can send at all (no control characters: aiohttp refuses them)
    legal = {k: v for k, v in headers.items() if v.isprintable()}
    return method, path, legal, body


async def test_no_request_is_answered_with_an_unhandled_error(
    client: TestClient[Any, Any],
) -> None:
    rng = random.Random(SEED)
    print(f"fuzz seed {SEED}")
    seen: dict[int, int] = {}
    for i in range(CASES):
        method, path, headers, body = _request(rng)
        async with client.request(method, path, headers=headers, data=body) as resp:
            await resp.read()
            seen[resp.status] = seen.get(resp.status, 0) + 1
            assert resp.status != 500, (i, method, path, headers, body[:200])
            if path.split("?")[0] in ("/status", "/metrics", "/models") and resp.status == 200:
                assert headers.get("Authorization") == f"Bearer {KEY}", (i, method, path)
    print("statuses:", dict(sorted(seen.items())))
    assert (await client.get("/healthz")).status == 200
    status = await client.get("/status", headers={"Authorization": f"Bearer {KEY}"})
    assert status.status == 200 and "workers" in await status.json()
    assert (await client.get("/status")).status == 401  # no key, no status
