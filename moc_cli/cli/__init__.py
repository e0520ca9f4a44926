"""The `moc` command line: `moc_cli.cli.app:app` (Typer), entry point `moc_cli.cli.app:main`."""
