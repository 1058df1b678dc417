"""The engine: one training loop (loop.py), evaluation (evaluate.py), weights I/O (io.py), metrics log (metrics.py)."""
