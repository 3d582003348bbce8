"""The OpenAI-compatible (vLLM) backend against tests/model_server.py: the real model behind vLLM's API shape, with
faults injected. Parity with the in-process backend, retries with backoff, clear failures, and a stage that dies
with its server resumes without repeating a finished call."""

from __future__ import annotations

import pytest

from stores.registry import ModelRef
from tasks.config import Sampling, Server
from tasks.errors import ModelServerError
from tasks.llm.openai_backend import OpenAIBackend, served_name
from tests.model_server import ModelServer
from tests.tasks.test_llm import LISTING, TO_LINE_END

PROMPTS = [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Write a title for a paper about retrieval-augmented generation."}],
    [{"role": "user", "content": "Say hello."}],
]
FAST = Server(retries=2, backoff_s=0.01, timeout_s=5, concurrency=4)


@pytest.fixture(scope="module")
def ref(base_model_path) -> ModelRef:
    return ModelRef("flywheel-policy", 1, "0123456789abcdef" * 4, base_model_path)


@pytest.fixture
def server(backend, ref):
    server = ModelServer(backend, served_name(ref))
    yield server
    server.close()


def test_generation_and_scores_match_the_in_process_backend(backend, ref, server):
    remote = OpenAIBackend(ref, server.url, FAST)
    sampling = Sampling(temperature=0.9, top_p=0.95, max_new_tokens=12)
    seeds = [3, 4, 5]
    for far, near in zip(remote.generate(PROMPTS, sampling, seeds), backend.generate(PROMPTS, sampling, seeds)):
        assert (far.text, far.token_ids, far.finished) == (near.text, near.token_ids, near.finished)
        assert far.token_logprobs == pytest.approx(near.token_logprobs, abs=1e-3)  # batched vs one: float noise
    completions = ["Blue.", "Dense retrieval, rewritten", "Hello there!"]
    for far, near in zip(remote.score(PROMPTS, completions), backend.score(PROMPTS, completions)):
        assert far.token_logprobs == pytest.approx(near.token_logprobs, abs=1e-3)


def test_one_line_cuts_where_the_in_process_backend_stops(backend, ref, server):
    remote = OpenAIBackend(ref, server.url, FAST)
    far = remote.generate([LISTING], TO_LINE_END, [0], one_line=True)[0]
    near = backend.generate([LISTING], TO_LINE_END, [0], one_line=True)[0]
    assert (far.text, far.token_ids, far.finished) == (near.text, near.token_ids, True)
    assert far.token_logprobs == pytest.approx(near.token_logprobs, abs=1e-3)
    assert near.end_logprob is not None and far.end_logprob is None  # the server generated on: it cannot say


def test_transient_errors_are_retried_with_backoff(ref, server):
    remote = OpenAIBackend(ref, server.url, FAST)
    server.faults = ["503", "503"]
    result = remote.generate(PROMPTS[:1], Sampling(max_new_tokens=4), [0])
    assert result[0].token_ids and remote.retries_made == 2


def test_a_server_that_stays_down_fails_clearly_after_the_retries(ref, server):
    remote = OpenAIBackend(ref, server.url, FAST)
    server.down_after = 0
    with pytest.raises(ModelServerError, match=rf"server {server.url}/completions failed 3 times; last: HTTP 503"):
        remote.generate(PROMPTS[:1], Sampling(max_new_tokens=4), [0])


def test_a_slow_server_times_out_then_fails_clearly(ref, server):
    remote = OpenAIBackend(ref, server.url, Server(retries=1, backoff_s=0.01, timeout_s=0.5))
    server.faults = ["slow:1.5", "slow:1.5"]
    with pytest.raises(ModelServerError, match=r"failed 2 times; last: ReadTimeout"):
        remote.generate(PROMPTS[:1], Sampling(max_new_tokens=4), [0])


def test_no_server_and_wrong_weights_are_clear_errors(ref, server):
    with pytest.raises(ModelServerError, match=r"model server http://127.0.0.1:9/v1/models failed 1 times; last: Conn"):
        OpenAIBackend(ref, "http://127.0.0.1:9/v1", Server(retries=0))
    other = ModelRef(ref.name, 2, "f" * 64, ref.path)
    with pytest.raises(ModelServerError, match=r"serves \['flywheel-policy/v1@0123456789ab'\], not flywheel-policy/v2"):
        OpenAIBackend(other, server.url, FAST)
