"""Candidate kernels measured against the training scripts' own (tools/bench_conv_kernels.py) before any of them
moves into a script."""
