from duplexctl.cli.main import main

main()
