"""The device side of the GPU check: each module here runs in its own process (`python -m ...`), imports
torch, measures, and writes one JSON file the driver (benchmarks/gpu_check/run.py) folds into results.json."""
