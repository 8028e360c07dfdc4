"""Benchmarks: fio against mounted devices, side by side, medians and ratios (not tests)."""
