"""`duplexd devkit tiny-model`: the refusals (the builds themselves run in the family tests)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from duplexd.cli import app

runner = CliRunner()


def test_unknown_kind_lists_the_builders(tmp_path: Path) -> None:
    result = runner.invoke(app, ["devkit", "tiny-model", "vits", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "no tiny-model builder 'vits'" in result.stderr
    assert "xtts, csm, csm-lora, spark, parler" in result.stderr


def test_a_non_empty_folder_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["devkit", "tiny-model", "xtts", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "exists and is not empty" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_help_names_every_kind() -> None:
    result = runner.invoke(app, ["devkit", "tiny-model", "--help"])
    assert result.exit_code == 0
    assert "csm-lora" in result.stdout and "--base" in result.stdout
