"""Process environment every flywheel entry point shares: no telemetry, no hub downloads.

Imported first by `stores/__init__.py`, so any `import stores`, `import tasks` or `import flows` applies it before
Prefect, MLflow, DVC, Great Expectations or transformers are imported. Values the user already set win.
"""

import os
import warnings

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


# Quiet unless FLYWHEEL_VERBOSE=1 (`flywheel --verbose`): no `datasets` bar per tokenizing pass, no library
# advisories; Prefect logs still reach its API and UI, only its console echo is held back to warnings.
QUIET_ENV = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # also transformers' "Loading weights" bar at every model load
    "TQDM_DISABLE": "1",  # TRL's reference log-prob pass; a bar that passes `disable` itself (ours) still shows
    "TRANSFORMERS_VERBOSITY": "error",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",  # worker and server processes
}


def verbose() -> bool:
    return os.environ.get("FLYWHEEL_VERBOSE", "0") == "1"


def apply_offline_env() -> None:
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
    if not verbose():
        for name, value in QUIET_ENV.items():
            os.environ.setdefault(name, value)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def set_verbose() -> None:
    """`--verbose`: everything the libraries say (before they are imported)."""
    os.environ["FLYWHEEL_VERBOSE"] = "1"
    for name, value in QUIET_ENV.items():
        if os.environ.get(name) == value:
            del os.environ[name]
    warnings.resetwarnings()
