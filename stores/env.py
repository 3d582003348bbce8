"""Process environment every flywheel entry point shares: no telemetry, no hub downloads.

Imported first by `stores/__init__.py`, so any `import stores`, `import tasks` or `import flows` applies it before
Prefect, MLflow, DVC, Great Expectations or transformers are imported. Values the user already set win.
"""

import os

OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    # Prefect's ephemeral API server builds a fresh database on first use; on a busy 2-core machine that has taken
    # longer than Prefect's default 20 s wait ("Timed out while attempting to connect to ephemeral Prefect API").
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def apply_offline_env() -> None:
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
