"""The `duplexctl` root app: help, version, lazy imports and the shared CLI helpers."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import typer
from rich.console import Console
from typer.testing import CliRunner

from duplexctl.cli._common import fail, table
from duplexctl.cli.main import app
from duplexd.errors import ModelNotFound

runner = CliRunner()

# Modules that cost hundreds of milliseconds (or seconds) to import.
HEAVY = (
    "grpc",
    "numpy",
    "textual",
    "sounddevice",
    "faster_whisper",
    "piper",
    "onnxruntime",
    "torch",
    "redis",
    "duplexd.config",
)


def test_help_lists_doctor_and_examples() -> None:
    result = runner.invoke(app, ["--help"], prog_name="duplexctl", env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "Usage: duplexctl" in result.output
    assert "doctor" in result.output
    assert "Examples" in result.output
    assert "duplexctl doctor --json" in result.output


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(app, [], prog_name="duplexctl")
    assert "doctor" in result.output


def test_version_matches_the_installed_package() -> None:
    for flag in ("--version", "-V"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0
        assert result.stdout.strip() == f"duplexctl {version('duplex')}"


def test_importing_the_cli_imports_no_heavy_module() -> None:
    code = (
        f"import sys, duplexctl.cli.main\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"imported at `duplexctl --help` time: {out.stdout}"


# What rendering `duplexctl --help` must not import either: rich's Markdown and Traceback (which
# typer's help renderer imports at its top: markdown-it and pygments) and the package metadata.
HELP_HEAVY = (*HEAVY, "httpx", "markdown_it", "pygments", "rich.markdown", "rich.traceback",
              "importlib.metadata")  # fmt: skip


def test_rendering_the_help_imports_no_heavy_module() -> None:
    """`duplexctl --help` in ≤ 300 ms comes down to what it imports: this is that list."""
    code = (
        "import sys\n"
        "sys.argv = ['duplexctl', '--help']\n"
        "from duplexctl.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY:' + ','.join(m for m in {HELP_HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "Usage: duplexctl" in out.stdout and "models" in out.stdout
    assert out.stdout.rstrip().endswith("HEAVY:"), out.stdout.rstrip().rpartition("HEAVY:")[2]


_DEFERRED_STILL_WORK = """
import sys, io, contextlib
from duplexctl.cli.main import defer_rich_extras
defer_rich_extras()
import typer, typer.rich_utils as ru
assert "rich.markdown" not in sys.modules
md = ru.Markdown("**bold**")
from rich.markdown import Markdown
assert type(md) is Markdown, type(md)
try:
    1 / 0
except ZeroDivisionError as exc:
    tb = ru.Traceback.from_exception(type(exc), exc, exc.__traceback__)
from rich.traceback import Traceback
assert type(tb) is Traceback
app = typer.Typer(rich_markup_mode="markdown")
@app.command()
def hello() -> None:
    "Say **hello** in markdown."
@app.command()
def bye() -> None:
    "Say bye."
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    app(["--help"])
assert "Say hello in markdown" in out.getvalue(), out.getvalue()
print("ok")
"""


def test_the_deferred_rich_classes_still_work_after_a_fast_help() -> None:
    """The help path imports typer's renderer with stand-ins for Markdown and Traceback; a
    markdown help and a traceback in the same process still get the real classes."""
    out = subprocess.run(
        [sys.executable, "-c", _DEFERRED_STILL_WORK],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_python_dash_m_runs_the_console() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "duplexctl", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == f"duplexctl {version('duplex')}"


def _failing_app(err: ModelNotFound | str, code: int | None) -> typer.Typer:
    tiny = typer.Typer()

    @tiny.command()
    def boom() -> None:
        fail(err, code)

    return tiny


def test_fail_prints_error_and_hint_on_stderr_and_uses_the_error_exit_code() -> None:
    err = ModelNotFound("unknown model 'x'", hint="see `duplexctl models list`")
    result = runner.invoke(_failing_app(err, None), [])
    assert result.exit_code == ModelNotFound.exit_code
    assert result.stdout == ""
    assert "error: unknown model 'x'" in result.stderr
    assert "  hint: see `duplexctl models list`" in result.stderr


def test_fail_with_a_message_and_an_explicit_code() -> None:
    result = runner.invoke(_failing_app("daemon not running", 8), [])
    assert result.exit_code == 8
    assert result.stderr.strip() == "error: daemon not running"


def test_table_cells_are_not_rich_markup() -> None:
    out = Console(width=120, record=True)
    out.print(table("Name", "Fix", rows=[("ml", "pip install 'duplex[ml]' [bold]x[/bold]")]))
    text = out.export_text()
    assert "pip install 'duplex[ml]' [bold]x[/bold]" in text
    assert "Name" in text and "Fix" in text
