"""Prefect flows, deployments and the `flywheel` CLI: thin callers of `tasks.runner.run_stage`."""

import stores  # noqa: F401  (offline, no-telemetry environment first)
