"""Benchmarks: small scripts that print a throughput figure (python -m bench.<name>)."""
