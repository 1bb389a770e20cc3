"""Benchmarks and the GPU check. A package (not a namespace) so that `python -m benchmarks.gpu_check` finds this
folder even where some installed distribution ships a top-level `benchmarks` package of its own."""
