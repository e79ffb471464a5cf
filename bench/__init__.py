"""Benchmarks for gitqueue: figures measured beside raw git in the same run (not tests).

Run ``python -m bench`` for the quick set, ``python -m bench --full`` for everything; see
bench/README.md for what each figure means.
"""
