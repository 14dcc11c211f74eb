"""Benchmarks: pipegraph against plain autograd, gradient accumulation and torch.distributed.pipelining."""
