"""Benchmarks of the mtut ops against what users would otherwise run."""
