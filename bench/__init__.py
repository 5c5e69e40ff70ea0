"""Benchmarks: scripts that write JSON under bench/results/ and print a table."""
