"""The GPU acceptance check (`make gpu-check`; docs/benchmarks.md, "The GPU check")."""
