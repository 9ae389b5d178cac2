"""Curriculum training: plain loops that run inside Ray Train, losses, checkpoints, stage submission.

Builds on everything up to eval (for its metrics); never imports registry or cli."""
