"""The console's output for people and for scripts: tables that fit 80 columns and pipe as
plain columns, log lines with one time format, and `logs -f` that survives a replaced file."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

from duplexctl.cli.tables import Column, Listing, emit
from duplexctl.logfmt import LogFormatter
from duplexctl.supervise.logs import current_run_start, follow_lines, marker_line

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")
BOX = "─│┃━┏┓┗┛╭╮╰╯"


def _listing(wide: bool = False) -> Listing:
    columns = [
        Column("MODEL"),
        Column("FAMILY", drop=3),
        Column("WORKER", drop=2),
        Column("STATE"),
        Column("REFS", drop=5, justify="right"),
        Column("PINNED", drop=4),
        Column("MEMORY", drop=1, justify="right"),
        Column("UNTIL", drop=1),
        Column("DEVICE", wide=True),
    ]
    rows = [
        ["sesame-unsloth-lora01", "csm", "tts-worker@0", "needs extra csm", "0", "no",
         "~120 MiB", "—", "cpu"],
        ["piper-en-us-joe *", "piper", "tts-worker@0", Text("resident", style="green"), "1",
         "no", "115 MiB", "forever", "cpu"],
    ]  # fmt: skip
    return Listing(columns, rows, wide=wide)


def _terminal(width: int) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)


def _printed(console: Console) -> list[str]:
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return [ANSI.sub("", line).rstrip() for line in text.splitlines()]


def test_on_a_narrow_terminal_columns_give_way_by_priority_and_ids_stay_whole() -> None:
    wide_enough = _terminal(200)
    emit(_listing(), wide_enough)
    header = _printed(wide_enough)[1].split()
    assert header == ["MODEL", "FAMILY", "WORKER", "STATE", "REFS", "PINNED", "MEMORY", "UNTIL"]
    narrow = _terminal(80)
    emit(_listing(), narrow)
    lines = _printed(narrow)
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[1].split() == ["MODEL", "WORKER", "STATE", "MEMORY", "UNTIL"]  # REFS, PINNED…
    assert any(line.split()[:1] == ["sesame-unsloth-lora01"] for line in lines)  # not folded
    assert any("needs extra csm" in line for line in lines)
    tiny = _terminal(50)
    emit(_listing(), tiny)
    assert _printed(tiny)[1].split() == ["MODEL", "STATE"]  # all that may go has gone


def test_wide_shows_every_column() -> None:
    out = _terminal(200)
    emit(_listing(wide=True), out)
    assert _printed(out)[1].split()[-1] == "DEVICE"


def test_piped_it_is_plain_aligned_columns_in_full() -> None:
    out = Console(file=io.StringIO(), width=40)  # not a terminal: width does not matter
    emit(_listing(), out)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert not any(ch in text for ch in BOX) and "\x1b[" not in text
    lines = text.splitlines()
    assert lines[0].split() == ["MODEL", "FAMILY", "WORKER", "STATE", "REFS", "PINNED", "MEMORY",
                                "UNTIL"]  # fmt: skip
    joe = next(line for line in lines if line.startswith("piper-en-us-joe"))  # grep works
    assert re.split(r"\s{2,}", joe) == ["piper-en-us-joe *", "piper", "tts-worker@0", "resident",
                                        "1", "no", "115 MiB", "forever"]  # fmt: skip
    # columns line up: every row's STATE starts under the header's
    at = lines[0].index("STATE")
    assert lines[1][at:].startswith("needs extra csm") and lines[2][at:].startswith("resident")


def test_a_multi_line_cell_pipes_as_one_line() -> None:
    out = Console(file=io.StringIO())
    emit(Listing(["WORKER", "RESIDENT"], [["w0", "a\nb"]]), out)
    assert out.file.getvalue().splitlines()[1].split("  ")[-1] == "a, b"  # type: ignore[attr-defined]


def test_bench_results_stay_readable_at_80_columns() -> None:
    """`bench --from` on a narrow terminal: the reference gives way, ids in metrics stay whole."""
    import types

    from duplexctl.bench import Row
    from duplexctl.bench.report import results_table

    suite = types.ModuleType("suite")
    suite.rows = lambda result: [  # type: ignore[attr-defined]
        Row(f"{m} first audio p50/p95/p99", "225.6 ms / 227.3 ms / 227.4 ms",
            "raw engine first chunk p50 260.1 ms, p95 280.9 ms", key=f"tts.{m}.fal_ms.p50")
        for m in ("sesame-unsloth-lora01", "piper-en-us-joe")
    ]  # fmt: skip
    checks = [{"key": "tts.piper-en-us-joe.fal_ms.p50", "op": "<=", "threshold": 250,
               "pass": True, "label": "first audio", "value": 225.6}]  # fmt: skip
    narrow = _terminal(80)
    emit(results_table({"tts": {}}, {"tts": suite}, checks), narrow)
    lines = _printed(narrow)
    assert all(len(line) <= 80 for line in lines), lines
    assert "REFERENCE" not in "\n".join(lines) and "pass" in "\n".join(lines)
    for model_id in ("sesame-unsloth-lora01", "piper-en-us-joe"):
        assert any(model_id in line.split() for line in lines), lines
    wide = _terminal(80)
    emit(results_table({"tts": {}}, {"tts": suite}, checks, wide=True), wide)
    assert "REFERENCE" in "\n".join(_printed(wide))
    piped = Console(file=io.StringIO())
    emit(results_table({"tts": {}}, {"tts": suite}, checks), piped)
    text = piped.file.getvalue()  # type: ignore[attr-defined]
    assert "raw engine first chunk p50 260.1 ms, p95 280.9 ms" in text  # in full, one line
    assert not any(ch in text for ch in BOX)


# -- logs ---------------------------------------------------------------------------------------


def test_log_lines_read_as_time_level_component_event_fields() -> None:
    fmt = LogFormatter()
    marker = marker_line("tts-worker@0", 1).decode()
    daemon_line = json.dumps({
        "component": "duplexd.tts.manager", "model": "espeak-en", "load_ms": 27.2,
        "error": "no such thing", "event": "model loaded", "process": "worker", "level": "info",
        "timestamp": "2027-01-15T08:00:01.250000Z",
    })  # fmt: skip
    old_marker = json.dumps({"event": "supervisor: starting", "timestamp": 1800000000.5})
    lines = [t.plain for raw in (marker, daemon_line, old_marker) for t in fmt.format(raw)]
    clock = r"\d\d:\d\d:\d\d\.\d{3}"
    assert any(re.fullmatch(r"── \d{4}-\d\d-\d\d.*", line) for line in lines)  # the date, once+
    rules = [ln for ln in lines if "────" in ln]
    assert re.fullmatch(rf"{clock} ──── supervisor: restart #1 \(tts-worker@0\) ────", rules[0])
    assert re.fullmatch(rf"{clock} ──── supervisor: starting ────", rules[1])  # unix time too
    loaded = next(line for line in lines if "model loaded" in line)
    assert re.fullmatch(
        rf"{clock} INFO  tts\.manager +model loaded  model=espeak-en load_ms=27\.2 "
        r'error="no such thing"',
        loaded,
    )
    assert fmt.format("Traceback (most recent call last):")[0].plain.startswith("Traceback")


def test_current_run_starts_at_the_last_start_marker() -> None:
    old = b'{"event": "old"}\n'
    quoted = json.dumps({"event": "said supervisor: starting", "x": "supervisor: starting"})
    data = old + marker_line("w", 0) + b'{"event": "new"}\n' + marker_line("w", 1)
    assert data[current_run_start(data) :].startswith(marker_line("w", 0)[:20])
    assert current_run_start(old + quoted.encode() + b"\n") == 0  # a quote is no marker


def test_follow_reads_on_through_restarts_and_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    path.write_text("one\n")
    seen: list[str] = []
    stop = threading.Event()
    reader = threading.Thread(
        target=lambda: seen.extend(follow_lines(path, 0, poll_s=0.02, stop=stop.is_set))
    )
    reader.start()
    try:
        with path.open("a") as fh:  # a restart appends its marker and lines; half a line waits
            fh.write("restart marker\ntw")
            fh.flush()
            time.sleep(0.1)
            fh.write("o\n")
        _wait(lambda: seen == ["one", "restart marker", "two"])
        replaced = tmp_path / "new.log"  # a new file at the path: read from its start
        replaced.write_text("fresh start, longer than what was read before\n")
        replaced.replace(path)
        _wait(lambda: seen[-1:] == ["fresh start, longer than what was read before"])
    finally:
        stop.set()
        reader.join(5)


def _wait(cond: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
