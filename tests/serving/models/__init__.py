"""Tests of serving/models: lifecycle, loading, batching, warmup, signed versions."""
