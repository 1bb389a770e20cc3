"""The machine a run is on: errors, logs, device and precision, processes and collectives, RNG, signals and
checkpoint files."""
