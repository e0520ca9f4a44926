"""`python -m moc_cli ...` runs the `moc` CLI."""

from moc_cli.cli.app import main

if __name__ == "__main__":
    main()
