"""Benchmark scripts and their report writers; run them as `python benchmarks/<name>.py`.

A package so that tests import the report writers as `benchmarks.<module>`. They use moc_cli's
public API only (names exported by a package's `__init__`).
"""
