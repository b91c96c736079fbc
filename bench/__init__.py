"""Benchmarks, run by hand: ``python -m bench`` (the workflow), ``python -m bench.reports``."""
