"""Benchmarks: write JSON with side-by-side ratios; not tests."""
