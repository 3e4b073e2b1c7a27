from duplexd.cli import main

main()
