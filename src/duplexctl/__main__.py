"""`python -m duplexctl` runs the console like the `duplexctl` script."""

from duplexctl.cli.main import main

main()
