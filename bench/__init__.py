"""Benchmarks: ``make bench`` (see BENCHMARKS.md)."""
