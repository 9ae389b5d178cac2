"""Evaluation: judges, metrics, quality gates and the evaluate step.

Builds on methods and everything below; never imports training, registry or cli."""
