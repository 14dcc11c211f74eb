"""Execution side of pipegraph: hand-derived autograd Functions, stages, schedules, transports, training."""
