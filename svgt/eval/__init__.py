"""Evaluation: judges, metrics and the evaluate step."""
