"""The latency benchmarking suite behind `clif-serve bench` (see docs/benchmarks.md)."""
