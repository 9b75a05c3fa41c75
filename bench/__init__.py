"""Benchmarks of connectome-storage side by side with what users would pick instead.

``python -m bench`` runs them all and writes docs/performance.md; ``--smoke`` runs every
one at toy sizes in seconds (tests/test_bench_smoke.py does, so the bench cannot rot).
"""
