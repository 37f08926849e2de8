"""The latency benchmarking suite behind `clif-serve bench` (results and how to read them: README, benchmarks/results/)."""
