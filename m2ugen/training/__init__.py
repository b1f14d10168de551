"""Training: the loop, its config, checkpoint state, metrics and feature precompute."""
