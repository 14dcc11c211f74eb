"""Execution side of pipegraph (torch): operators, engine, transport, training, the compare harness, benchmarks."""
