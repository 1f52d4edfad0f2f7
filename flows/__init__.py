"""Prefect flows (one per stage, the pipeline, evaluation) and the CLI."""

import os

# Offline and on 2 cores, Prefect's ephemeral API needs these (DESIGN.md §2); a user's values win.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
