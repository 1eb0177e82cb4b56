"""Training: typed configs, atomic checkpoints, the step-based trainer."""
