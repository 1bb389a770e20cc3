"""After training: the `byol eval` and `byol embed` reports, and `byol export`'s formats."""
