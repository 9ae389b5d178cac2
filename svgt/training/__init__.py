"""Curriculum training: plain loops that run inside Ray Train, losses, checkpoints."""
