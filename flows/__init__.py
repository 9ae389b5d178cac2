"""Prefect flows for the svgt pipeline: thin wiring around the same step functions `svgt <step>` runs."""

import os

# Before Prefect is imported: its server would send usage analytics, which on a machine without internet logs
# an ERROR from every telemetry heartbeat of a run that succeeded. Users who want analytics set it to true.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
