"""byol's GPU check, in Python: `python -m benchmarks.gpu_check` (or `bash benchmarks/gpu_check.sh`). run.py says
what it does, its knobs, and what lands in $OUT."""
