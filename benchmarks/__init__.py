"""Benchmarks of lightning_align against the naive or official algorithms and the tools users would pick instead.

``python -m benchmarks [--quick|--full] [--only NAME ...] [--model DIR]`` runs the registered comparisons
(``benchmarks.registry``) and writes their tables into ``docs/benchmarks.md``.
"""
