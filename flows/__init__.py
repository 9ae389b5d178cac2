"""Prefect flows for the svgt pipeline: thin wiring around the same step functions `svgt <step>` runs."""
