"""The `duplexctl` command line: one Typer app (or command) per group, assembled in `main`.

Nothing is imported here so that a group module can import `duplexctl.cli._common` without
pulling in every other group.
"""
