"""Benchmark library: efficiency (`efficiency.py`) and accuracy (`accuracy.py`); scripts in benchmarks/."""
