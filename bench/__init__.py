"""Benchmarks: what llm-ledger adds to each OpenAI SDK call and stream chunk, beside the bare SDK and peers.

Run ``make bench`` (or ``python -m bench --help``). Results and how to read them: ``bench/RESULTS.md``.
These are scripts, not timed tests: ``tests/test_bench_smoke.py`` only runs them once at tiny sizes.
"""
