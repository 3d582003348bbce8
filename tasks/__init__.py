"""Stage logic: one package per flywheel stage, plain Python over tables and typed config (no Prefect here)."""

import stores  # noqa: F401  (applies the offline, no-telemetry environment before heavy imports)
