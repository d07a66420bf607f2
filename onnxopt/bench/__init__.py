"""Benchmarking: interleaved latency measurement, statistics, reports."""
