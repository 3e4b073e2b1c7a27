"""The detached supervisor: ``python -m duplexctl.supervise.run --state-dir DIR --plan FILE``.

`duplexctl up --detach` starts this in its own session with its output going to
``supervisor.log``, then watches state.json until the phase reads "ready" or "failed". It
stops (gracefully, daemons included) on SIGTERM, which is what `duplexctl down` sends.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from duplexctl.supervise.proc import Timing
from duplexctl.supervise.spec import load_plan
from duplexctl.supervise.state import StateStore
from duplexctl.supervise.supervisor import serve
from duplexd.errors import DuplexError
from duplexd.logging import configure_logging, get_logger

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m duplexctl.supervise.run")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--plan", type=Path, required=True, help="plan.json written by `up`")
    parser.add_argument("--ready-timeout", type=float, default=Timing.ready_timeout_s)
    args = parser.parse_args(argv)
    configure_logging("INFO", process="supervisor", stream=sys.stderr)
    store = StateStore(args.state_dir)
    timing = Timing(ready_timeout_s=args.ready_timeout)
    try:
        asyncio.run(serve(load_plan(args.plan), store, timing=timing))
    except DuplexError as exc:  # the reason is in state.json for `up` to show
        get_logger("duplexctl.supervise").error("start failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
