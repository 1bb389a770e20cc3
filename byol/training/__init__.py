"""A run: its config, the trainer and its step, CUDA graphs, optimizers and schedules, the run folder,
monitors."""
