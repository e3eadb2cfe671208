"""Speed benchmarks: each measures a ratio against its baseline in the same run; `make bench` runs them all."""
